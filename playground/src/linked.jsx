// Inputs linked to a data source by the schema's x-d365-options annotation (manifest.schema.json#/$defs/options_link):
// rjsf's own SchemaField renders them, with the schema the source gives. An options source (tables, columns,
// records) turns the input into a dropdown (a multi-select for an array such as select); a schema source
// (fields_schema, key_schema, message_schema) swaps in the schema generated from the table's metadata, one widget per column type.
import { useEffect, useState } from 'react';
import { getDefaultRegistry } from '@rjsf/core';
import { dataSource } from './api.js';
import { formSchema, linkParams } from './pointers.js';

const BaseSchemaField = getDefaultRegistry().fields.SchemaField;
const SCHEMA_SOURCES = new Set(['fields_schema', 'key_schema', 'message_schema']);
const PAGE_SIZE = 50;

function useItems(connection, source, params) {
  const key = connection && params ? JSON.stringify([connection, source, params]) : null;
  const [state, setState] = useState({ key: null });
  useEffect(() => {
    if (!key) return undefined;
    let live = true;
    dataSource(connection, source, params).then(
      (items) => live && setState({ key, items }),
      (error) => live && setState({ key, error: error.message }),
    );
    return () => {
      live = false;
    };
  }, [key]);
  if (!key) return { waiting: true };
  return state.key === key ? state : { loading: true };
}

function withoutLink(schema) {
  const { 'x-d365-options': _link, ...rest } = schema;
  return rest;
}

function renderable(schema) {
  return Boolean(schema && (schema.type || schema.properties || schema.oneOf || schema.anyOf));
}

function choices(items, current) {
  const list = items.map((item) => ({ const: item.value, title: String(item.label ?? item.value) }));
  for (const value of [].concat(current ?? [])) {
    if (typeof value === 'string' && value && !list.some((c) => c.const === value)) {
      list.push({ const: value, title: value });
    }
  }
  return list;
}

// The schema rjsf gets for this input once the source has answered.
function linkedSchema(schema, link, items, formData) {
  const plain = withoutLink(schema);
  if (!items) return plain;
  if (SCHEMA_SOURCES.has(link.source)) {
    const { $schema: _s, $id: _i, ...generated } = items[0] || {};
    if (!renderable(generated)) return plain;
    return { ...formSchema(generated), title: plain.title ?? generated.title, description: generated.description ?? plain.description };
  }
  const list = choices(items, formData);
  if (list.length === 0) return plain;
  const isArray = plain.type === 'array' || (Array.isArray(plain.type) && plain.type.includes('array'));
  if (isArray) {
    const { pattern: _p, examples: _e, ...item } = plain.items || {};
    return { ...plain, items: { ...item, oneOf: list }, uniqueItems: true };
  }
  const { pattern: _p, examples: _e, format: _f, ...rest } = plain;
  return { ...rest, oneOf: list };
}

function LinkedField(props) {
  const { link, registry, fieldPathId, formData } = props;
  const context = registry.formContext;
  const [search, setSearch] = useState('');
  const [page, setPage] = useState(1);
  const picker = link.source === 'records';
  const params = linkParams(link, fieldPathId.path, context.formData, context.required && context.required[link.source]);
  // The records source answers a page of PAGE_SIZE rows by primary name; the picker pages through them.
  const asked = params && picker ? { ...params, ...(search ? { search } : {}), page, page_size: PAGE_SIZE } : params;
  const state = useItems(context.connection, link.source, asked);
  const schema = linkedSchema(props.schema, link, state.items, formData);
  let note = null;
  if (state.waiting) note = `Options from ${link.source} once ${Object.keys(link.params || {}).join(', ')} is chosen.`;
  else if (state.loading) note = `Loading ${link.source}...`;
  else if (state.error) note = `${link.source}: ${state.error}`;
  else if (state.items && state.items.length === 0) note = `${link.source}: nothing to choose from.`;
  return (
    <div
      className={`linked linked-${link.source}`}
      data-source={link.source}
      data-path={fieldPathId.path.join('/')}
      data-params={Object.keys(link.params || {}).sort().join(',')}
      data-state={state.waiting ? 'waiting' : state.loading ? 'loading' : state.error ? 'error' : 'ready'}
    >
      {picker && params && (
        <input
          type="search"
          className="record-search"
          placeholder={`Search ${params.table} by name`}
          aria-label={`Search ${params.table} records`}
          value={search}
          onChange={(event) => {
            setSearch(event.target.value);
            setPage(1);
          }}
        />
      )}
      {picker && params && (page > 1 || (state.items && state.items.length === PAGE_SIZE)) && (
        <div className="record-pages">
          <button type="button" className="page-previous" disabled={page === 1} onClick={() => setPage(page - 1)}>
            Previous
          </button>
          <span className="page-number">Page {page}</span>
          <button
            type="button"
            className="page-next"
            disabled={!state.items || state.items.length < PAGE_SIZE}
            onClick={() => setPage(page + 1)}
          >
            Next
          </button>
        </div>
      )}
      <BaseSchemaField {...props} schema={schema} />
      {note && <p className={state.error ? 'link-note link-error' : 'link-note'}>{note}</p>}
    </div>
  );
}

export function LinkedSchemaField(props) {
  const link = props.schema && props.schema['x-d365-options'];
  if (!link || !link.source || !props.registry.formContext) return <BaseSchemaField {...props} />;
  return <LinkedField {...props} link={link} />;
}
