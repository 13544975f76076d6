"""Recursive-descent parser for ``$filter`` expressions over the lexer's tokens, Dataverse functions included."""

from __future__ import annotations

from collections.abc import Mapping

from .odata_ast import (
    DATAVERSE_FUNCTIONS,
    DATAVERSE_NAMESPACE,
    Call,
    Compare,
    DataverseFunction,
    Expr,
    FunctionSpec,
    Lambda,
    Literal,
    Logical,
    Not,
    ODataSyntaxError,
    ParamShape,
    Property,
)
from .odata_lexer import (
    ARITHMETIC,
    COMPARISONS,
    OP_KIND,
    SIMPLE_IDENT_RE,
    STRING_FUNCTIONS,
    Token,
    syntax_error,
    tokenize,
)

# ---------------------------------------------------------------------------------------------------------------------
# Parser


_BOOLEAN_NODES = (Compare, Logical, Not, Call, DataverseFunction, Lambda)


def _edm_of(node: Expr) -> str | None:
    """Best-effort static type of a node (None when it depends on metadata)."""
    if isinstance(node, Literal):
        return None if node.edm_type == "null" else node.edm_type
    if isinstance(node, Call):
        return "Edm.String" if node.name in ("tolower", "toupper") else "Edm.Boolean"
    if isinstance(node, _BOOLEAN_NODES):
        return "Edm.Boolean"
    return None


class Parser:
    def __init__(self, text: str, aliases: Mapping[str, str] | None, *, in_alias: bool = False) -> None:
        self.text = text
        self.aliases = aliases or {}
        self.in_alias = in_alias
        self.tokens = tokenize(text, allow_arrays=True)
        self.i = 0
        self.lambda_vars: list[str] = []

    # token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> Token:
        t = self.tokens[self.i]
        if t.kind != "END":
            self.i += 1
        return t

    def error(self, tok: Token | None = None) -> ODataSyntaxError:
        t = tok or self.tok
        if t.kind == "END":
            return ODataSyntaxError(f"Expression expected at position {t.pos} in '{self.text}'.", t.pos)
        return syntax_error(self.text, t.pos)

    def expect(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            raise ODataSyntaxError(f"{what} expected at position {self.tok.pos} in '{self.text}'.", self.tok.pos)
        return self.advance()

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "IDENT" and self.tok.text == word

    def finish(self) -> None:
        if self.tok.kind != "END":
            raise syntax_error(self.text, self.tok.pos)

    # grammar
    def parse_expr(self) -> Expr:
        return self.parse_logical("or")

    def parse_logical(self, op: str) -> Expr:
        first = self.parse_logical("and") if op == "or" else self.parse_comparison()
        operands = [first]
        while self.is_word(op):
            tok = self.advance()
            operand = self.parse_logical("and") if op == "or" else self.parse_comparison()
            for side in (operands[-1], operand):
                kind = _edm_of(side)
                if kind not in (None, "Edm.Boolean"):
                    raise ODataSyntaxError(
                        f"A binary operator with incompatible types was detected. Found operand types '{kind}' and "
                        f"'Edm.Boolean' for operator kind '{op.capitalize()}'.",
                        tok.pos,
                    )
            operands.append(operand)
        if len(operands) == 1:
            return first
        return Logical(op, tuple(operands))

    def parse_comparison(self) -> Expr:
        left = self.parse_unary()
        while self.tok.kind == "IDENT" and self.tok.text in COMPARISONS + ARITHMETIC:
            tok = self.advance()
            if tok.text in ARITHMETIC:
                raise ODataSyntaxError(f"The '{tok.text}' arithmetic operator is not supported.", tok.pos)
            right = self.parse_unary()
            lt, rt = _edm_of(left), _edm_of(right)
            if lt and rt and lt != rt and "Edm.Boolean" in (lt, rt):
                raise ODataSyntaxError(
                    f"A binary operator with incompatible types was detected. Found operand types '{lt}' and "
                    f"'{rt}' for operator kind '{OP_KIND[tok.text]}'.",
                    tok.pos,
                )
            left = Compare(tok.text, left, right)
        return left

    def parse_unary(self) -> Expr:
        if self.is_word("not"):
            tok = self.advance()
            operand = self.parse_unary()
            kind = _edm_of(operand)
            if kind not in (None, "Edm.Boolean"):
                raise ODataSyntaxError(
                    "A unary operator with an incompatible type was detected. Found operand type "
                    f"'{kind}' for operator kind 'Not'.",
                    tok.pos,
                )
            return Not(operand)
        return self.parse_primary()

    def parse_primary(self) -> Expr:
        tok = self.tok
        if tok.kind == "LPAREN":
            self.advance()
            inner = self.parse_expr()
            self.expect("RPAREN", "')' or operator")
            return inner
        if tok.kind in ("STRING", "LITERAL"):
            self.advance()
            assert isinstance(tok.value, Literal)
            return tok.value
        if tok.kind == "ALIAS":
            self.advance()
            return self.resolve_alias(tok)
        if tok.kind == "IDENT":
            if "." in tok.text:
                return self.parse_qualified()
            if self.peek().kind == "LPAREN":
                return self.parse_call()
            return self.parse_path()
        raise self.error()

    def resolve_alias(self, tok: Token) -> Expr:
        if self.in_alias:
            raise syntax_error(self.text, tok.pos)
        raw = self.aliases.get(tok.text)
        if raw is None:
            return Literal(None, "null")  # an unassigned alias is null (documented)
        sub = Parser(raw, self.aliases, in_alias=True)
        sub.lambda_vars = self.lambda_vars
        node = sub.parse_expr()
        sub.finish()
        return node

    def parse_call(self) -> Expr:
        name_tok = self.advance()
        name = name_tok.text
        if name not in STRING_FUNCTIONS:
            raise ODataSyntaxError(
                f"An unknown function with name '{name}' was found. This may also be a function import or a key "
                "lookup on a navigation property, which is not allowed.",
                name_tok.pos,
            )
        self.expect("LPAREN", "'('")
        args: list[Expr] = []
        if self.tok.kind != "RPAREN":
            args.append(self.parse_expr())
            while self.tok.kind == "COMMA":
                self.advance()
                args.append(self.parse_expr())
        self.expect("RPAREN", "')' or ','")
        if len(args) != STRING_FUNCTIONS[name]:
            raise ODataSyntaxError(
                f"No function signature for the function with name '{name}' matches the specified arguments. "
                "The function signatures considered are: "
                + (
                    f"{name}(Edm.String Nullable=true, Edm.String Nullable=true)."
                    if STRING_FUNCTIONS[name] == 2
                    else f"{name}(Edm.String Nullable=true)."
                ),
                name_tok.pos,
            )
        for arg in args:
            kind = _edm_of(arg)
            if kind not in (None, "Edm.String"):
                raise ODataSyntaxError(
                    f"No function signature for the function with name '{name}' matches the specified arguments.",
                    name_tok.pos,
                )
        return Call(name, tuple(args))

    def parse_path(self) -> Expr:
        start = self.tok
        segments: list[str] = [self.advance().text]
        var: str | None = None
        if segments[0] in self.lambda_vars:
            var = segments.pop()
        elif segments[0].startswith("$"):
            raise syntax_error(self.text, start.pos)
        while self.tok.kind == "SLASH":
            self.advance()
            seg = self.tok
            if seg.kind != "IDENT" or "." in seg.text:
                raise syntax_error(self.text, seg.pos)
            self.advance()
            if seg.text in ("any", "all") and self.tok.kind == "LPAREN":
                if not segments:
                    raise syntax_error(self.text, seg.pos)
                return self.parse_lambda(seg, Property(tuple(segments), var))
            segments.append(seg.text)
        return Property(tuple(segments), var)

    def parse_lambda(self, kind_tok: Token, nav: Property) -> Expr:
        self.expect("LPAREN", "'('")
        if self.tok.kind == "RPAREN":
            self.advance()
            if kind_tok.text == "all":
                raise syntax_error(self.text, self.tok.pos)
            return Lambda("any", nav, None, None)
        var_tok = self.tok
        if var_tok.kind != "IDENT" or not SIMPLE_IDENT_RE.fullmatch(var_tok.text):
            raise syntax_error(self.text, var_tok.pos)
        self.advance()
        self.expect("COLON", "':'")
        self.lambda_vars.append(var_tok.text)
        try:
            body = self.parse_expr()
        finally:
            self.lambda_vars.pop()
        self.expect("RPAREN", "')' or operator")
        return Lambda(kind_tok.text, nav, var_tok.text, body)

    def parse_qualified(self) -> Expr:
        tok = self.advance()
        namespace, _, name = tok.text.rpartition(".")
        if namespace != DATAVERSE_NAMESPACE or self.tok.kind != "LPAREN":
            if self.tok.kind == "LPAREN":
                raise ODataSyntaxError(
                    f"An unknown function with name '{tok.text}' was found. This may also be a function import or a "
                    "key lookup on a navigation property, which is not allowed.",
                    tok.pos,
                )
            raise syntax_error(self.text, tok.pos)
        spec = DATAVERSE_FUNCTIONS.get(name)
        if spec is None:
            raise ODataSyntaxError(
                f"An unknown function with name '{tok.text}' was found. This may also be a function import or a "
                "key lookup on a navigation property, which is not allowed.",
                tok.pos,
            )
        self.advance()
        params: dict[str, str | Literal | tuple[Literal, ...]] = {}
        if self.tok.kind != "RPAREN":
            while True:
                pname = self.expect("IDENT", "Parameter name")
                self.expect("EQUALS", "'='")
                if pname.text in params:
                    raise ODataSyntaxError(f"Duplicate parameter '{pname.text}' in function '{tok.text}'.", pname.pos)
                params[pname.text] = self.parse_param_value()
                if self.tok.kind == "COMMA":
                    self.advance()
                    continue
                break
        self.expect("RPAREN", "')' or ','")
        return _build_function(name, spec, params, tok.pos)

    def parse_param_value(self) -> Literal | tuple[Literal, ...]:
        tok = self.advance()
        if tok.kind == "ARRAY":
            assert isinstance(tok.value, tuple)
            return tok.value
        if tok.kind in ("STRING", "LITERAL"):
            assert isinstance(tok.value, Literal)
            return tok.value
        if tok.kind == "ALIAS" and not self.in_alias:
            raw = self.aliases.get(tok.text)
            if raw is None:
                return Literal(None, "null")
            sub = Parser(raw, self.aliases, in_alias=True)
            value = sub.parse_param_value()
            sub.finish()
            return value
        raise self.error(tok)


def _build_function(
    name: str, spec: FunctionSpec, params: dict[str, str | Literal | tuple[Literal, ...]], pos: int
) -> DataverseFunction:
    qualified = f"{DATAVERSE_NAMESPACE}.{name}"
    expected = {"PropertyName"} | {
        ParamShape.NONE: set(),
        ParamShape.ONE: {"PropertyValue"},
        ParamShape.TWO: {"PropertyValues"},
        ParamShape.LIST: {"PropertyValues"},
        ParamShape.PAIR: {"PropertyValue1", "PropertyValue2"},
    }[spec.shape]
    given = set(params)
    if given != expected:
        signature = ",".join(sorted(expected, key=lambda p: (p != "PropertyName", p)))
        raise ODataSyntaxError(
            f"The function '{qualified}' takes the parameters ({signature}); got ({','.join(params)}).", pos
        )
    prop = params["PropertyName"]
    if not isinstance(prop, Literal) or not isinstance(prop.value, str):
        raise ODataSyntaxError(f"The parameter 'PropertyName' of function '{qualified}' must be a string.", pos)
    values: tuple[Literal, ...] = ()
    if spec.shape is ParamShape.ONE:
        one = params["PropertyValue"]
        if not isinstance(one, Literal):
            raise ODataSyntaxError(f"The parameter 'PropertyValue' of function '{qualified}' must be a value.", pos)
        values = (one,)
    elif spec.shape is ParamShape.PAIR:
        pair = (params["PropertyValue1"], params["PropertyValue2"])
        if any(isinstance(p, tuple) for p in pair):
            raise ODataSyntaxError(f"The parameters of function '{qualified}' must be values.", pos)
        values = tuple(p for p in pair if isinstance(p, Literal))
    elif spec.shape in (ParamShape.TWO, ParamShape.LIST):
        many = params["PropertyValues"]
        if not isinstance(many, tuple):
            raise ODataSyntaxError(f"The parameter 'PropertyValues' of function '{qualified}' must be a list.", pos)
        if spec.shape is ParamShape.TWO and len(many) != 2:
            raise ODataSyntaxError(f"The function '{qualified}' requires exactly two values in PropertyValues.", pos)
        if not many:
            raise ODataSyntaxError(f"The function '{qualified}' requires at least one value in PropertyValues.", pos)
        values = many
    if spec.value_kind == "int":
        for v in values:
            if isinstance(v.value, bool) or not isinstance(v.value, int | str):
                raise ODataSyntaxError(f"The function '{qualified}' expects an integer value.", pos)
            try:
                int(str(v.value))
            except ValueError:
                raise ODataSyntaxError(f"The function '{qualified}' expects an integer value.", pos) from None
    params["PropertyName"] = prop.value
    return DataverseFunction(name, params, prop.value, values)
