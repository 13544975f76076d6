// Walks each action's bundled input schema the way react-jsonschema-form's SchemaField does, with rjsf's own schema
// utilities and its ajv8 validator (draft 2020-12), and reports what a form could not render or resolve.
//
// stdin: {"actions": [{"id": ..., "schema": {bundled input schema}, "examples": [{"title": ..., "input": {...}}]}]}
// stdout: {"rjsf": version, "actions": {id: {"fields": n, "choices": n, "problems": [{"path": ..., "problem": ...}]}}}
//
// One process for every schema: node and ajv start once. tests/builder/test_rjsf_render.py runs it, reads the report.
import { readFileSync } from 'node:fs';
import Ajv2020 from 'ajv/dist/2020.js';
import {
  canExpand,
  createSchemaUtils,
  getSchemaType,
  getUiOptions,
  isFixedItems,
  optionsList,
  orderProperties,
  toFieldPathId,
} from '@rjsf/utils';
import { customizeValidator } from '@rjsf/validator-ajv8';

// rjsf's fields by schema type (@rjsf/core getFieldComponent); any other type renders "Unsupported field schema".
const FIELDS = new Set(['array', 'boolean', 'integer', 'number', 'object', 'string', 'null']);
// Keywords rjsf's retrieveSchema never applies (it reads draft-07 `dependencies`): the form shows no sign of the rule,
// and a person meets it only as an ajv message after submitting.
const NOT_APPLIED = [
  'dependentSchemas',
  'dependentRequired',
  'prefixItems',
  'unevaluatedProperties',
  'unevaluatedItems',
];
// Keywords that describe a oneOf/anyOf branch without giving it anything of its own to render.
const ANNOTATIONS = new Set(['title', 'description', 'required', 'examples', '$comment', 'not']);
const FORM_OPTIONS = { idPrefix: 'root', idSeparator: '_' };

// A schema location: every item of an array is `[]`, since one item schema renders them all.
function pathOf(parent, key) {
  if (typeof key === 'number') return `${parent}[]`;
  return /^[A-Za-z_@][A-Za-z0-9_@.]*$/.test(key) ? `${parent}.${key}` : `${parent}[${JSON.stringify(key)}]`;
}

class Walk {
  constructor(su, validator, root, report) {
    Object.assign(this, { su, validator, root, report });
  }

  problem(path, text) {
    const key = `${path}\u0000${text}`;
    if (!this.report.seen.has(key)) {
      this.report.seen.add(key);
      this.report.problems.push({ path, problem: text });
    }
  }

  // One field as SchemaField renders it: resolve, then the typed field and, beside it, the oneOf/anyOf selector.
  field(schema, data, path, fieldPath) {
    if (typeof schema === 'boolean') {
      if (!schema) this.problem(path, 'schema is false: nothing can be entered');
      return;
    }
    let resolved;
    try {
      resolved = this.su.retrieveSchema(schema, data);
    } catch (error) {
      this.problem(path, `retrieveSchema failed: ${error.message}`);
      return;
    }
    this.report.fields += 1;
    for (const keyword of NOT_APPLIED) {
      if (!(keyword in resolved)) continue;
      const on = typeof resolved[keyword] === 'object' ? ` (on ${Object.keys(resolved[keyword]).join(', ')})` : '';
      this.problem(path, `${keyword}${on} is not applied by rjsf: the form cannot show this rule`);
    }
    getUiOptions({});
    this.su.getDisplayLabel(resolved, {});
    const id = toFieldPathId('', FORM_OPTIONS, fieldPath);
    if (this.su.isSelect(resolved)) {
      this.select(resolved, data, path);
      return;
    }
    const xxx = resolved.oneOf ? 'oneOf' : resolved.anyOf ? 'anyOf' : null;
    const type = getSchemaType(resolved);
    if (type === undefined && xxx === null) {
      this.problem(path, 'no type: rjsf renders "Unsupported field schema"');
    } else if (type !== undefined && !FIELDS.has(type)) {
      this.problem(path, `type ${JSON.stringify(type)}: rjsf renders "Unsupported field schema"`);
    } else if (type === 'object') {
      this.object(resolved, xxx !== null, data, path, id.path);
    } else if (type === 'array') {
      this.array(resolved, data, path, id.path);
    }
    if (xxx !== null) this.choice(resolved, xxx, data, path, fieldPath);
  }

  select(resolved, data, path) {
    this.report.choices += 1;
    const options = optionsList(resolved) ?? [];
    if (options.length === 0) this.problem(path, 'a select with no options');
    const branches = Array.isArray(resolved.enum) ? null : (resolved.oneOf ?? resolved.anyOf);
    const untitled = branches ? branches.filter((o) => !o.title).map((o) => o.const) : resolved.enum;
    if (untitled.length > 0) {
      this.problem(path, `choices shown as raw values, no title: ${untitled.map((v) => JSON.stringify(v)).join(', ')}`);
    }
    const isOption = (o) => this.validator.isValid({ const: o.value }, data, this.root);
    if (data !== undefined && !options.some(isOption)) {
      this.problem(path, `value ${JSON.stringify(data)} is none of the select's options`);
    }
  }

  // ObjectField. retrieveSchema has already turned each key of `data` that only additionalProperties allows into a
  // property; a new key gets the additionalProperties schema, or (untyped) the type of its value.
  object(resolved, branched, data, path, fieldPath) {
    const properties = resolved.properties ?? {};
    const names = Object.keys(properties);
    const extra = resolved.additionalProperties;
    // An object that takes nothing says so with additionalProperties: false; any other, rjsf shows as an empty group
    // (unless its oneOf/anyOf branches hold what is entered).
    if (names.length === 0 && extra !== false && !branched && !canExpand(resolved, {}, data)) {
      this.problem(path, 'object with no properties and no additionalProperties schema: rjsf shows an empty group');
    }
    if (extra !== null && typeof extra === 'object' && ('type' in extra || 'oneOf' in extra || 'anyOf' in extra)) {
      this.field('type' in extra ? extra : { type: 'object', ...extra }, undefined, `${path}.*`, [...fieldPath, '*']);
    }
    const value = data !== null && typeof data === 'object' && !Array.isArray(data) ? data : {};
    let ordered;
    try {
      ordered = orderProperties(names, getUiOptions({}).order);
    } catch (error) {
      this.problem(path, `orderProperties failed: ${error.message}`);
      ordered = names;
    }
    for (const name of ordered) {
      this.field(properties[name], value[name], pathOf(path, name), [...fieldPath, name]);
    }
  }

  array(resolved, data, path, fieldPath) {
    if (this.su.isMultiSelect(resolved)) {
      const items = this.su.retrieveSchema(resolved.items, undefined);
      this.select(items, undefined, pathOf(path, 0));
      if (Array.isArray(data)) data.forEach((item, i) => this.select(items, item, pathOf(path, i)));
      return;
    }
    if (isFixedItems(resolved)) {
      this.problem(path, 'items is a list (draft-07 tuple): draft 2020-12 writes prefixItems, which rjsf does not apply');
      return;
    }
    if (resolved.items === undefined) {
      this.problem(path, 'array without items: rjsf renders "Missing items definition"');
      return;
    }
    const items = Array.isArray(data) && data.length > 0 ? data : [undefined];
    items.forEach((item, i) => this.field(resolved.items, item, pathOf(path, i), [...fieldPath, i]));
  }

  // MultiSchemaField: one option picked from the data with getClosestMatchingOption, each option labelled by title.
  choice(resolved, xxx, data, path, fieldPath) {
    this.report.choices += 1;
    const where = `${path} (${xxx})`;
    const options = resolved[xxx].map((o) => (typeof o === 'object' ? this.su.retrieveSchema(o, data) : {}));
    const untitled = options.map((o, i) => (o.title ? null : `Option ${i + 1}`)).filter(Boolean);
    if (untitled.length > 0) this.problem(where, `branches without a title, shown as ${untitled.join(', ')}`);
    const closest = this.su.getClosestMatchingOption(data, options, 0);
    const first = this.su.getFirstMatchingOption(data, options);
    if (data !== undefined) {
      const accepting = [...options.keys()].filter((i) => this.validator.isValid(options[i], data, this.root));
      if (accepting.length === 0) {
        this.problem(where, `the value ${JSON.stringify(data)} matches none of the branches`);
      } else if (xxx === 'oneOf' && accepting.length > 1) {
        const which = accepting.join(', ');
        this.problem(where, `the value ${JSON.stringify(data)} matches branches ${which}: oneOf needs one`);
      } else if (!accepting.includes(closest) || !accepting.includes(first)) {
        const picked = `rjsf picks branch ${closest} (first match ${first})`;
        this.problem(where, `${picked} for ${JSON.stringify(data)}, which refuses it`);
      }
    }
    // A person can switch to any branch: each one that adds something to render is walked, the picked one with data.
    options.forEach((option, i) => {
      const adds = (k) => !ANNOTATIONS.has(k) && !(k === 'type' && option.type === resolved.type);
      const own = Object.keys(option).some(adds);
      if (!own) return;
      const typed = resolved.type && !option.type ? { ...option, type: resolved.type } : option;
      this.field(typed, i === closest ? data : undefined, path, fieldPath);
    });
  }
}

// A validator per action: ajv caches compiled schemas by $id, and one action's must not answer for another's.
function renderAction(action) {
  const report = { fields: 0, choices: 0, problems: [], seen: new Set() };
  const schema = action.schema;
  const validator = customizeValidator({ AjvClass: Ajv2020 });
    const su = createSchemaUtils(validator, schema);
  const walk = new Walk(su, validator, schema, report);
  try {
    su.getDefaultFormState(schema, undefined);
  } catch (error) {
    walk.problem('$', `getDefaultFormState failed: ${error.message}`);
  }
  walk.field(schema, undefined, '$', []);
  for (const example of action.examples) {
    const where = `$ (example ${JSON.stringify(example.title)})`;
    const { errors } = validator.validateFormData(example.input, schema);
    for (const error of errors) {
      walk.problem(where, `validator-ajv8 refuses it: ${error.property || '.'} ${error.message}`);
    }
    try {
      su.toPathSchema(schema, '', example.input);
      su.getDefaultFormState(schema, example.input);
    } catch (error) {
      walk.problem(where, `toPathSchema/getDefaultFormState failed: ${error.message}`);
    }
    walk.field(schema, example.input, '$', []);
  }
  delete report.seen;
  return report;
}

const input = JSON.parse(readFileSync(0, 'utf8'));
const rjsf = JSON.parse(readFileSync(new URL('node_modules/@rjsf/utils/package.json', import.meta.url), 'utf8'));
const out = { rjsf: rjsf.version, actions: {} };
for (const action of input.actions) {
  try {
    out.actions[action.id] = renderAction(action);
  } catch (error) {
    out.actions[action.id] = { fields: 0, choices: 0, problems: [{ path: '$', problem: `crashed: ${error.stack}` }] };
  }
}
process.stdout.write(JSON.stringify(out));
