// x-d365-options params are relative JSON pointers (without the trailing #) from the annotated instance's own place:
// "1/table" is the table property of the instance's parent object, "3/table" three levels up (manifest.schema.json).

export function resolveRelative(pointer, path) {
  const [up, ...rest] = pointer.split('/');
  const levels = Number(up);
  if (!Number.isInteger(levels) || levels > path.length) return null;
  const base = path.slice(0, path.length - levels);
  return base.concat(rest.map((token) => token.replace(/~1/g, '/').replace(/~0/g, '~')));
}

export function getIn(data, path) {
  let here = data;
  for (const step of path) {
    if (here === null || typeof here !== 'object') return undefined;
    here = here[step];
  }
  return here;
}

// The source's parameters for one instance, or null while one it requires is still empty in the form. required
// lists the source's required parameters (its params schema); unknown, every linked parameter is waited for.
export function linkParams(link, path, formData, required) {
  const params = { ...(link.fixed || {}) };
  for (const [name, pointer] of Object.entries(link.params || {})) {
    const at = resolveRelative(pointer, path);
    const value = at && getIn(formData, at);
    if (value === undefined || value === null || value === '') {
      if (!required || required.includes(name)) return null;
      continue;
    }
    params[name] = value;
  }
  return params;
}

// A problem's errors ({path: "/inputs/fields/name", message}) as rjsf's extraErrors tree under the inputs.
export function errorTree(errors, prefix = '/inputs') {
  const tree = {};
  for (const { path, message } of errors || []) {
    if (!path || !path.startsWith(prefix)) continue;
    const steps = path.slice(prefix.length).split('/').slice(1);
    let node = tree;
    for (const step of steps) node = node[step.replace(/~1/g, '/').replace(/~0/g, '~')] ||= {};
    (node.__errors ||= []).push(message);
  }
  return tree;
}

// A oneOf/anyOf whose branches only say which properties are required ("by id" or "by alternate key") has nothing
// to render, yet rjsf shows it as an option switch that resets the inputs on every change. The form leaves it out
// (the branch titles join the description); the server still enforces it and its error names the property.
const CONSTRAINT_ONLY = new Set(['title', 'description', 'required', 'not', '$comment']);

export function formSchema(schema) {
  if (Array.isArray(schema)) return schema.map(formSchema);
  if (schema === null || typeof schema !== 'object') return schema;
  const out = {};
  for (const [key, value] of Object.entries(schema)) out[key] = key === 'const' || key === 'default' || key === 'examples' ? value : formSchema(value);
  for (const keyword of ['oneOf', 'anyOf']) {
    const branches = out[keyword];
    if (Array.isArray(branches) && branches.length && branches.every((b) => b && typeof b === 'object' && Object.keys(b).every((k) => CONSTRAINT_ONLY.has(k)))) {
      delete out[keyword];
      const rule = branches.map((b) => b.title || (b.required || []).join(', ')).join(keyword === 'oneOf' ? ' or ' : ', ');
      out.description = [out.description, `Give one: ${rule}.`].filter(Boolean).join(' ');
    }
  }
  return out;
}
