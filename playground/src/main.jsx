// The builder playground: every action of the manifest as a form rendered by react-jsonschema-form from the
// bundled input schema that GET /actions serves, run over the runtime server's HTTP API (api20.md).
import { useEffect, useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';
import Form from '@rjsf/core';
import Ajv2020 from 'ajv/dist/2020.js';
import { customizeValidator } from '@rjsf/validator-ajv8';
import { api, forgetDataSources } from './api.js';
import { errorTree, formSchema } from './pointers.js';
import { LinkedSchemaField } from './linked.jsx';
import { Connections, Events, Jobs } from './panels.jsx';
import './app.css';

// The schemas are draft 2020-12. rjsf's validator picks oneOf branches; the inputs themselves are checked by the
// server (the runtime's own validation, as the CLI does), whose problem errors are shown next to their fields.
const validator = customizeValidator({ AjvClass: Ajv2020 });
const FIELDS = { SchemaField: LinkedSchemaField };

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function runCommand(action, connection, inputs) {
  return `printf '%s' ${shellQuote(JSON.stringify(inputs))} | d365 run ${action} --connection ${connection}.json --input -`;
}

function Problem({ error }) {
  if (!error) return null;
  const problem = error.problem || {};
  return (
    <div className="problem" role="alert">
      <strong>
        {error.status ? `${error.status} ` : ''}
        {problem.title || 'error'}
      </strong>
      <pre>{problem.detail || error.message}</pre>
      {problem.dataverse_code && <div className="small">Dataverse code {problem.dataverse_code}</div>}
      {(problem.errors || []).length > 0 && (
        <ul className="problem-errors">
          {problem.errors.map((e, i) => (
            <li key={i}>
              <code>{e.path}</code> {e.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

function Exchange({ exchange }) {
  if (!exchange || exchange.length === 0) return null;
  return (
    <table className="exchange">
      <caption>HTTP exchange</caption>
      <thead>
        <tr>
          <th>Method</th>
          <th>URL</th>
          <th>Status</th>
          <th>ms</th>
        </tr>
      </thead>
      <tbody>
        {exchange.map((x, i) => (
          <tr key={i}>
            <td>{x.method}</td>
            <td className="url">{x.url}</td>
            <td>{x.status}</td>
            <td>{Math.round(x.elapsed_ms)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Result({ result }) {
  if (!result) return null;
  return (
    <section className="panel" id="result">
      <h2>
        Output <span className="muted small">{result.label}</span>
      </h2>
      <pre className="output">{JSON.stringify(result.output, null, 2)}</pre>
      <Exchange exchange={result.exchange} />
    </section>
  );
}

function ActionForm({ action, connection, required, onJob }) {
  const [formData, setFormData] = useState({});
  const [error, setError] = useState(null);
  const [result, setResult] = useState(null);
  const [busy, setBusy] = useState(false);
  const [copied, setCopied] = useState(null);
  const [jsonText, setJsonText] = useState('');
  useEffect(() => {
    setFormData({});
    setError(null);
    setResult(null);
    setCopied(null);
  }, [action.id]);
  const context = useMemo(() => ({ formData, connection, required }), [formData, connection, required]);
  const schema = useMemo(() => formSchema(action.input_schema), [action]);
  const extraErrors = error && error.problem ? errorTree(error.problem.errors) : undefined;

  const execute = async (inputs) => {
    setBusy(true);
    setError(null);
    setResult(null);
    try {
      if (action.long_running) {
        onJob(await api('POST', '/jobs', { action: action.id, connection, inputs }));
      } else {
        const answer = await api('POST', `/actions/${action.id}`, { connection, inputs });
        setResult({ label: action.id, output: answer.output, exchange: answer.exchange });
      }
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  const copy = (text) => {
    setCopied(text);
    if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
  };
  // Pasted inputs: loaded into the form, or run as they are (thousands of write_entities records are not for a form).
  const parsed = () => {
    try {
      return JSON.parse(jsonText);
    } catch (failure) {
      setError({ message: `Inputs JSON: ${failure.message}` });
      return undefined;
    }
  };
  const load = () => {
    const inputs = parsed();
    if (inputs !== undefined) {
      setFormData(inputs);
      setError(null);
    }
  };
  const runJson = () => {
    const inputs = parsed();
    if (inputs !== undefined) execute(inputs);
  };

  return (
    <div>
      <section className="panel" id="action">
        <h2>{action.title}</h2>
        <p className="muted">{action.description}</p>
        {!connection && <p className="link-error">Choose a connection first.</p>}
        <Form
          key={action.id}
          schema={schema}
          validator={validator}
          fields={FIELDS}
          formData={formData}
          formContext={context}
          onChange={(event) => setFormData(event.formData)}
          onSubmit={({ formData: inputs }) => execute(inputs)}
          noValidate
          noHtml5Validate
          showErrorList={false}
          extraErrors={extraErrors}
          idPrefix="inputs"
        >
          <div className="buttons">
            <button type="submit" className="run" disabled={busy || !connection}>
              {action.long_running ? 'Start job' : 'Run'}
            </button>
            <button type="button" className="copy-json" onClick={() => copy(JSON.stringify(formData, null, 2))}>
              Copy inputs as JSON
            </button>
            <button type="button" className="copy-cli" onClick={() => copy(runCommand(action.id, connection || 'NAME', formData))}>
              Copy as d365 run
            </button>
          </div>
        </Form>
        {copied && <pre className="copied">{copied}</pre>}
        <details className="json-inputs">
          <summary>Inputs as JSON</summary>
          <textarea
            aria-label="Inputs as JSON"
            rows={8}
            value={jsonText}
            onChange={(event) => setJsonText(event.target.value)}
            placeholder='{"table": "account", ...}'
          />
          <button type="button" className="load-json" onClick={load}>
            Load into the form
          </button>{' '}
          <button type="button" className="run-json" onClick={runJson} disabled={busy || !connection}>
            {action.long_running ? 'Start job from JSON' : 'Run from JSON'}
          </button>
        </details>
        <Problem error={error} />
      </section>
      <Result result={result} />
    </div>
  );
}

function App() {
  const [signedIn, setSignedIn] = useState(null);
  const [actions, setActions] = useState([]);
  const [required, setRequired] = useState(undefined);
  const [connections, setConnections] = useState([]);
  const [connection, setConnection] = useState(null);
  const [actionId, setActionId] = useState(null);
  const [jobs, setJobs] = useState([]);
  const [shown, setShown] = useState(null);
  const [error, setError] = useState(null);
  const connected = new URLSearchParams(window.location.search).get('connected');

  const loadConnections = async () => {
    const list = (await api('GET', '/connections')).connections;
    setConnections(list);
    setConnection((old) => old || connected || (list[0] && list[0].name) || null);
  };
  useEffect(() => {
    (async () => {
      try {
        const listed = (await api('GET', '/actions')).actions;
        setActions(listed);
        setActionId(listed.length ? listed[0].id : null);
        // Which parameters each data source requires: a linked input waits only for those (an unbound message
        // names no table, and its parameters still have a form).
        const sources = (await api('GET', '/data-sources')).data_sources;
        setRequired(Object.fromEntries(sources.map((d) => [d.id, (d.params_schema && d.params_schema.required) || []])));
        await loadConnections();
        setSignedIn(true);
      } catch (failure) {
        if (failure.status === 401) setSignedIn(false);
        else setError(failure);
      }
    })();
  }, []);
  useEffect(() => forgetDataSources(), [connection]);

  const updateJob = (job) => setJobs((old) => old.map((j) => (j.id === job.id ? { ...j, ...job } : j)));
  if (signedIn === false) {
    return (
      <main className="signin">
        <h1>d365 playground</h1>
        <p>
          The API needs its token: <a href="/login">sign in</a>.
        </p>
      </main>
    );
  }
  const action = actions.find((a) => a.id === actionId);
  const groups = {};
  for (const a of actions) (groups[a.category || 'Actions'] ||= []).push(a);
  return (
    <div className="layout">
      <header>
        <h1>d365 playground</h1>
        {connected && <span className="badge ok">signed in to {connected}</span>}
        <form method="post" action="/logout" onSubmit={(e) => { e.preventDefault(); api('POST', '/logout').finally(() => window.location.assign('/login')); }}>
          <button type="submit">Sign out</button>
        </form>
      </header>
      <aside>
        <Connections connections={connections} selected={connection} onSelect={setConnection} onError={setError} />
        <section className="panel">
          <h2>Action</h2>
          <select aria-label="Action" id="action-select" value={actionId || ''} onChange={(e) => setActionId(e.target.value)}>
            {Object.entries(groups).map(([group, members]) => (
              <optgroup key={group} label={group}>
                {members.map((a) => (
                  <option key={a.id} value={a.id}>
                    {a.title} ({a.id})
                  </option>
                ))}
              </optgroup>
            ))}
          </select>
        </section>
        <Jobs jobs={jobs} onUpdate={updateJob} onShow={setShown} />
        <Events />
      </aside>
      <main>
        <Problem error={error} />
        {action && (
          <ActionForm
            action={action}
            connection={connection}
            required={required}
            onJob={(job) => setJobs((old) => [job, ...old])}
          />
        )}
        {shown && (
          <Result result={{ label: `job ${shown.id} (${shown.status})`, output: shown.output ?? shown.error, exchange: [] }} />
        )}
      </main>
    </div>
  );
}

createRoot(document.getElementById('root')).render(<App />);
