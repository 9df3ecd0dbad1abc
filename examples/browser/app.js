// The demo page: shows what Plex pushes to this page's user and sends what is typed upstream.
// Settings come from the query string, all optional:
//   token     the user's token (with the demo's auth it is the uid), default 7
//   ws        the WebSocket URL; without it the page asks the HTTP API where to connect:
//   api       the HTTP API, default http://<this page's host>:9579
//   ws_port   the WebSocket port, default 9580
//   secure    1 for wss
//   heartbeat seconds between heartbeats, default 30
import { PlexClient } from './plex.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const options = {
  token: params.get('token') ?? '7',
  heartbeatInterval: Number(params.get('heartbeat') ?? 30) * 1000,
  onMessage: (uri, body) => {
    const code = document.createElement('code');
    code.textContent = uri;
    add($('messages'), code, ' ', body);
  },
  onState: (state, detail) => {
    $('state').textContent = state;
    $('state').className = state;
    let text = state;
    if (state === 'connecting') text += ` (attempt ${detail.attempt})`;
    if (state === 'open') text += ` ${detail.url}`;
    if (state === 'resumed') {
      text += detail.recovered ? ': nothing was missed' : ': some pushes were lost meanwhile';
    }
    if (state === 'closed') {
      text += ` ${detail.code} ${detail.reason}; `
        + (detail.reconnectIn === null ? 'not reconnecting' : `reconnecting in ${detail.reconnectIn} ms`);
    }
    add($('log'), text);
  },
};
if (params.has('ws')) {
  options.url = params.get('ws');
} else {
  options.hostUrl = `${params.get('api') ?? `http://${location.hostname}:9579`}/plex/v1/host`;
  options.wsPort = Number(params.get('ws_port') ?? 9580);
  options.secure = params.get('secure') === '1';
}
$('where').textContent = `token ${options.token}, ${options.url ?? `host from ${options.hostUrl}`}`;

const plex = new PlexClient(options).connect();
window.plex = plex; // for the console (and the browser test)

$('send').addEventListener('submit', (event) => {
  event.preventDefault();
  const form = event.target;
  const sent = plex.send(form.uri.value, form.body.value);
  add($('log'), sent ? `sent ${form.uri.value} ${form.body.value}` : 'not sent: not authenticated');
});

/** Appends a line with the time to a list; text goes in as text, never as HTML. */
function add(list, ...parts) {
  const item = document.createElement('li');
  const time = document.createElement('time');
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, ' ', ...parts);
  list.append(item);
}
