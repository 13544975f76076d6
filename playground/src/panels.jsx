// The side panels: connections (with the hosted sign-in), jobs with their progress, webhook events as they arrive.
import { useEffect, useRef, useState } from 'react';
import { api } from './api.js';

export function Connections({ connections, selected, onSelect, onError }) {
  const connect = async (name) => {
    try {
      const { authorize_url: url } = await api('POST', `/connections/${encodeURIComponent(name)}/connect`);
      window.location.assign(url); // the identity provider redirects back to /oauth/callback/{name}
    } catch (error) {
      onError(error);
    }
  };
  return (
    <section className="panel" id="connections">
      <h2>Connections</h2>
      {connections.length === 0 && <p className="muted">None: start d365 serve with --connection NAME=FILE.</p>}
      <ul>
        {connections.map((c) => (
          <li key={c.name} className={c.name === selected ? 'chosen' : ''} data-connection={c.name}>
            <label>
              <input type="radio" name="connection" checked={c.name === selected} onChange={() => onSelect(c.name)} />
              <strong>{c.name}</strong> <span className="muted">{c.type}</span>
            </label>
            <div className="muted small">{c.environment_url}</div>
            {c.connected ? (
              <span className="badge ok">connected</span>
            ) : (
              <button type="button" className="connect" onClick={() => connect(c.name)}>
                Connect
              </button>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}

export function Progress({ progress }) {
  const { done = 0, total = null, message = null } = progress || {};
  const share = total ? Math.min(100, Math.round((100 * done) / total)) : null;
  return (
    <div className="progress" role="progressbar" aria-valuemin={0} aria-valuemax={total ?? undefined} aria-valuenow={done}>
      <div className="bar" style={{ width: share === null ? '100%' : `${share}%` }} data-indeterminate={share === null} />
      <span className="progress-text">
        {done}
        {total ? ` / ${total}` : ''} {message || ''}
      </span>
    </div>
  );
}

const FINISHED = new Set(['succeeded', 'failed', 'cancelled']);

export function Jobs({ jobs, onUpdate, onShow }) {
  const running = jobs.filter((job) => !FINISHED.has(job.status)).map((job) => job.id);
  useEffect(() => {
    if (running.length === 0) return undefined;
    const timer = setInterval(async () => {
      for (const id of running) {
        try {
          onUpdate(await api('GET', `/jobs/${id}`));
        } catch {
          /* the next tick asks again */
        }
      }
    }, 400);
    return () => clearInterval(timer);
  }, [running.join(',')]);
  const cancel = async (id) => onUpdate(await api('DELETE', `/jobs/${id}`).catch(() => ({ id, status: 'cancelling' })));
  return (
    <section className="panel" id="jobs">
      <h2>Jobs</h2>
      {jobs.length === 0 && <p className="muted">Long actions started with "Start job" show here.</p>}
      <ul>
        {jobs.map((job) => (
          <li key={job.id} className={`job job-${job.status}`} data-job={job.id}>
            <div>
              <strong>{job.action}</strong> <span className={`status status-${job.status}`}>{job.status}</span>
            </div>
            <Progress progress={job.progress} />
            {FINISHED.has(job.status) ? (
              <button type="button" onClick={() => onShow(job)}>
                Show result
              </button>
            ) : (
              <button type="button" onClick={() => cancel(job.id)}>
                Cancel
              </button>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}

export function Events() {
  const [events, setEvents] = useState([]);
  const [error, setError] = useState(null);
  const after = useRef(0);
  useEffect(() => {
    let live = true;
    const poll = async () => {
      try {
        const answer = await api('GET', `/events?after=${after.current}`);
        after.current = answer.next;
        if (live && answer.events.length) setEvents((old) => answer.events.concat(old).slice(0, 200).sort((a, b) => b.seq - a.seq));
        if (live) setError(null);
      } catch (failure) {
        if (live) setError(failure.message);
      }
    };
    poll();
    const timer = setInterval(poll, 1000);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, []);
  return (
    <section className="panel" id="events">
      <h2>Webhook events</h2>
      {error && <p className="link-error small">{error}</p>}
      {events.length === 0 && <p className="muted">Events posted to /triggers/webhook/NAME appear here.</p>}
      <ul>
        {events.map((e) => (
          <li key={e.seq} className="event" data-seq={e.seq}>
            <div className="small">
              #{e.seq} <strong>{e.connection}</strong> {e.trigger} <span className="muted">{e.received_at}</span>
            </div>
            <pre>{JSON.stringify(e.event, null, 1)}</pre>
          </li>
        ))}
      </ul>
    </section>
  );
}
