// plex.js: a dependency-free browser client for the Plex push gateway, as an ES module.
//
//   import { PlexClient } from './plex.js';
//   const plex = new PlexClient({
//     url: 'wss://push.example.com:9580/plex/v1/ws',   // or hostUrl + wsPort, see below
//     token: 'the-user-token',
//     onMessage: (uri, body, seq) => console.log(uri, body),
//     onState: (state, detail) => console.log(state, detail),
//   });
//   plex.connect();
//   plex.send('/chat', 'hello');   // an upstream message, once authenticated
//   plex.close();
//
// It speaks the server's WebSocket transport (README.md, PROTOCOL.md): one JSON message
// {"seq", "uri", "body"} per text frame. It authenticates with the token, heartbeats,
// answers nothing else, and reconnects with exponential backoff and jitter. When the server
// keeps a history (HistorySize), it resumes where it left off: the pushes it missed while
// away arrive first, and `onState('resumed', {recovered})` says whether any were lost.

/** The uris of the protocol itself; everything else is the application's. */
const AUTH = '/auth/server';
const AUTH_SUCCESS = '/auth/success';
const AUTH_FAILED = '/auth/failed';
const HEARTBEAT = '/heartbeat';

/** Where the server serves WebSocket upgrades. */
const WS_PATH = '/plex/v1/ws';

/** Characters an HTTP token, and so a WebSocket subprotocol name, may hold (RFC 9110 §5.6.2). */
const SUBPROTOCOL = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** The reason given when a token is refused, by `/auth/failed` or by the server's close. */
const REFUSED = 'authentication failed';

/**
 * @typedef {'connecting' | 'open' | 'authenticated' | 'resumed' | 'closed'} PlexState
 *
 * @typedef {object} PlexOptions
 * @property {string} token The user's token, as the server's auth mode expects it.
 * @property {string} [url] The WebSocket URL, e.g. `wss://push.example.com:9580/plex/v1/ws`.
 *   Without it the client asks `hostUrl` where to connect.
 * @property {string} [hostUrl] The server's `GET /plex/v1/host` URL, e.g.
 *   `https://push.example.com/plex/v1/host`. It answers `{"host": "ip:port"}`, the address
 *   of a TCP client listener (`OuterServers`); the client keeps the ip and connects to
 *   `wsPort` on it instead.
 * @property {number} [wsPort] The servers' `WsPort`; required with `hostUrl`.
 * @property {boolean} [secure] With `hostUrl`: wss rather than ws. Default: whether this page
 *   is served over https (an https page may not open ws://).
 * @property {(uri: string, body: string, seq: number) => void} [onMessage] Each pushed message.
 * @property {(state: PlexState, detail: object) => void} [onState] Each change of state;
 *   `closed` comes with `{code, reason, reconnectIn}`, `reconnectIn` in ms or `null`;
 *   `resumed` (after `authenticated`, on a reconnect to a server that keeps a history) with
 *   `{recovered, epoch, offset}`: `recovered` false means pushes were lost meanwhile.
 * @property {number} [heartbeatInterval=30000] Milliseconds between heartbeats; keep it well
 *   under the server's `HeartbeatTimeout` (120 s by default).
 * @property {number} [connectTimeout=10000] Milliseconds to look the host up and open the
 *   socket before giving up on this attempt.
 * @property {number} [minDelay=500] The first reconnection delay, in ms; it doubles each
 *   failed attempt, up to `maxDelay`, and a random half of it is taken off.
 * @property {number} [maxDelay=30000] The longest reconnection delay, in ms.
 * @property {boolean} [reconnect=true] Reconnect when the connection is lost.
 * @property {boolean} [reconnectAfterKick=false] Reconnect even after the server kicked this
 *   user (close code 1008, reason `kicked`).
 * @property {boolean} [reconnectAfterAuthFailure=false] Reconnect even after the token was
 *   refused (it will most likely be refused again).
 */

/** A connection to Plex that keeps itself authenticated and alive. */
export class PlexClient {
  /** @param {PlexOptions} options */
  constructor(options) {
    if (!options || typeof options.token !== 'string') {
      throw new TypeError('PlexClient needs options.token');
    }
    if (!options.url && !(options.hostUrl && options.wsPort)) {
      throw new TypeError('PlexClient needs options.url, or options.hostUrl and options.wsPort');
    }
    /** @type {Required<Omit<PlexOptions, 'url' | 'hostUrl' | 'wsPort'>> & PlexOptions} */
    this.options = {
      secure: globalThis.location?.protocol === 'https:',
      onMessage: () => {},
      onState: () => {},
      heartbeatInterval: 30000,
      connectTimeout: 10000,
      minDelay: 500,
      maxDelay: 30000,
      reconnect: true,
      reconnectAfterKick: false,
      reconnectAfterAuthFailure: false,
      ...options,
    };
    /** @type {PlexState} */
    this.state = 'closed';
    this._ws = null;
    this._attempt = 0; // failed attempts since the last authentication
    this._generation = 0; // bumped per attempt: callbacks of an older one do nothing
    this._running = false;
    this._answered = false; // something arrived since the last heartbeat went out
    this._timers = {};
    /** The place of the last push received in the uid's history: `{epoch, offset}`. */
    this.position = null;
  }

  /** Starts connecting (and reconnecting as the options say). Returns this client. */
  connect() {
    if (!this._running) {
      this._running = true;
      this._attempt = 0;
      this._open();
    }
    return this;
  }

  /**
   * Sends an upstream message, which the server hands to its `on_message` hook. Only once
   * authenticated; returns whether it was sent.
   * @param {string} uri The application's uri, e.g. `/chat`.
   * @param {string | object} [body] A string, or anything `JSON.stringify` takes.
   */
  send(uri, body = '') {
    if (this.state !== 'authenticated') return false;
    this._write(uri, typeof body === 'string' ? body : JSON.stringify(body));
    return true;
  }

  /** Closes the connection for good (until `connect()` is called again). */
  close() {
    const waiting = this._running && this.state === 'closed'; // for the next attempt
    this._running = false;
    if (this.state !== 'closed' || waiting) this._drop(1000, 'closed by the client');
  }

  /** One attempt: look the host up if needed, open the socket, authenticate. */
  async _open() {
    const generation = ++this._generation;
    const current = () => generation === this._generation;
    this._setState('connecting', { attempt: this._attempt + 1 });
    this._timers.connect = setTimeout(() => this._drop(1006, 'connect timeout'),
      this.options.connectTimeout);
    let url;
    try {
      url = await this._url();
    } catch (e) {
      if (current()) this._drop(1006, `host lookup failed: ${e.message}`);
      return;
    }
    if (!current()) return;
    const { token } = this.options;
    // A browser cannot set headers on a WebSocket, so the token travels in the subprotocol
    // list when its characters allow, and in an /auth/server message otherwise, which is
    // also where a resuming client gives its place.
    const inUpgrade = SUBPROTOCOL.test(token) && !this.position;
    let ws;
    try {
      ws = new WebSocket(url, inUpgrade ? ['plex', `plex.token.${token}`] : ['plex']);
    } catch (e) {
      this._running = false; // a malformed URL will not get better
      this._drop(1006, `cannot open ${url}: ${e.message}`);
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      clearTimeout(this._timers.connect);
      this._setState('open', { url });
      if (!inUpgrade) this._write(AUTH, token, this.position ?? {});
    };
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = (event) => this._drop(event.code, event.reason || describe(event.code));
  }

  /** The WebSocket URL: given, or from the host lookup. */
  async _url() {
    const { url, hostUrl, wsPort, secure, connectTimeout } = this.options;
    if (url) return url;
    const signal = AbortSignal.timeout(connectTimeout);
    const response = await fetch(hostUrl, { cache: 'no-store', signal });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const { host } = await response.json();
    // "ip:port", "name:port" or "[v6]:port": keep what is before the port.
    const colon = host.lastIndexOf(':');
    const name = colon > host.lastIndexOf(']') ? host.slice(0, colon) : host;
    return `${secure ? 'wss' : 'ws'}://${name}:${wsPort}${WS_PATH}`;
  }

  /** One text frame from the server. */
  _receive(data) {
    if (typeof data !== 'string') return; // binary frames belong to the protobuf codec
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    this._answered = true;
    const { uri = '', body = '', seq = 0, offset, epoch } = message ?? {};
    switch (uri) {
      case AUTH_SUCCESS:
        this._attempt = 0;
        this._setState('authenticated', {});
        this._timers.heartbeat = setInterval(() => this._heartbeat(),
          this.options.heartbeatInterval);
        if (body) this._resumed(body);
        break;
      case AUTH_FAILED:
        this._drop(1008, REFUSED);
        break;
      case HEARTBEAT:
        break;
      default:
        if (offset) this.position = { epoch: epoch ?? '', offset };
        this.options.onMessage(uri, body ?? '', seq ?? 0);
    }
  }

  /** The answer to a resumption: what the server kept of the history since our place. */
  _resumed(body) {
    let answer;
    try {
      answer = JSON.parse(body);
    } catch {
      return;
    }
    if (typeof answer?.recovered !== 'boolean') return;
    const { recovered, epoch, offset } = answer;
    this._setState('resumed', { recovered, epoch, offset });
  }

  /** Sends a heartbeat, unless the last one is still unanswered: then the server (or the
   * network to it) is gone, which a browser may take minutes to notice by itself. */
  _heartbeat() {
    if (!this._answered) {
      this._drop(1006, 'the server stopped answering');
      return;
    }
    this._answered = false;
    this._write(HEARTBEAT, '');
  }

  _write(uri, body, extra = {}) {
    this._ws.send(JSON.stringify({ seq: Date.now(), uri, body, ...extra }));
  }

  /**
   * The end of a connection, from whatever side: forgets the socket, reports `closed`, and
   * schedules the next attempt if there is to be one.
   */
  _drop(code, reason) {
    this._generation++;
    clearTimeout(this._timers.connect);
    clearTimeout(this._timers.retry);
    clearInterval(this._timers.heartbeat);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close(1000);
    }
    const o = this.options;
    const kicked = code === 1008 && reason === 'kicked';
    const refused = reason === REFUSED;
    const retry = this._running && o.reconnect && (o.reconnectAfterKick || !kicked)
      && (o.reconnectAfterAuthFailure || !refused);
    let reconnectIn = null;
    if (retry) {
      const ceiling = Math.min(o.maxDelay, o.minDelay * 2 ** this._attempt++);
      reconnectIn = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
      this._timers.retry = setTimeout(() => this._open(), reconnectIn);
    } else {
      this._running = false;
    }
    this._setState('closed', { code, reason, reconnectIn });
  }

  _setState(state, detail) {
    this.state = state;
    this.options.onState(state, detail);
  }
}

/** Words for the close codes a browser reports without a reason. */
function describe(code) {
  switch (code) {
    case 1000: return 'closed';
    case 1001: return 'going away';
    case 1006: return 'connection lost';
    default: return `close code ${code}`;
  }
}
