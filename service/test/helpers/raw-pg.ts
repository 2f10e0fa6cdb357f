// A minimal PostgreSQL wire-protocol client (node:net and node:tls only) that performs a SCRAM-SHA-256 login in
// two explicit steps: beginLogin() stops right after the server's SCRAM server-first message, and finish()
// completes the exchange later. Lets a test pause a login mid-handshake, e.g. to prove that a password
// rotation locks out a login whose handshake began before the rotation and finishes after it. Over TLS when
// asked (SSLRequest first, as libpq does): PgBouncer admits app logins over TLS only (pgbouncer-hba.conf).
import { createHash, createHmac, pbkdf2, randomBytes } from 'node:crypto';
import { connect, isIP, type Socket } from 'node:net';
import { connect as connectTls } from 'node:tls';
import { promisify } from 'node:util';

const pbkdf2Async = promisify(pbkdf2);

export type FinishResult = { ok: true } | { ok: false; code: string; message: string };

export interface PausedLogin {
  /** Sends the client-final message (proof from the password given to beginLogin) and reads until
   *  ReadyForQuery or ErrorResponse. { ok: false, code: 'closed' } if the server closed the socket.
   *  Rejects only on a protocol violation (unexpected message, wrong server signature). */
  finish(): Promise<{ ok: true } | { ok: false; code: string; message: string }>;
  /** If a session was established: runs a simple query and returns the first column of the first row
   *  as text (null for SQL NULL or no rows), or throws with the server's error. */
  query(sql: string): Promise<string | null>;
  /** Closes the socket (sends Terminate if a session is open). Never throws. */
  close(): void;
}

export interface LoginOptions {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** TLS, the server's certificate checked against `ca` (PEM) and `host` (sslmode=verify-full); none if absent. */
  tls?: { ca: string | Buffer };
}

/** An error carrying the SQLSTATE of the server's ErrorResponse (or 'closed' / 'protocol'). */
class PgError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = 'PgError';
    this.code = code;
  }
}

interface Message {
  type: string;
  body: Buffer;
}

/** Splits the backend byte stream into messages (type byte + int32 length incl. itself + body). */
class MessageReader {
  private buffer = Buffer.alloc(0);
  private readonly queue: Message[] = [];
  private waiter: { resolve: (message: Message) => void; reject: (error: Error) => void } | undefined;
  private failure: Error | undefined;

  constructor(socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      while (this.buffer.length >= 5) {
        const length = this.buffer.readInt32BE(1);
        if (this.buffer.length < 1 + length) break;
        this.queue.push({ type: String.fromCharCode(this.buffer[0] ?? 0), body: this.buffer.subarray(5, 1 + length) });
        this.buffer = this.buffer.subarray(1 + length);
      }
      this.wake();
    });
    // 'error' is always followed by 'close'; remember the first reason the stream ended.
    socket.on('error', (error: Error) => this.fail(new PgError('closed', `socket error: ${error.message}`)));
    socket.on('close', () => this.fail(new PgError('closed', 'server closed the connection')));
  }

  /** The next whole message; messages already received are delivered before any close is reported. */
  next(): Promise<Message> {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.wake();
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    const message = this.queue.shift();
    if (message) {
      this.waiter = undefined;
      waiter.resolve(message);
    } else if (this.failure) {
      this.waiter = undefined;
      waiter.reject(this.failure);
    }
  }
}

function frontendMessage(type: string, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([header, body]);
}

function int32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeInt32BE(value);
  return buffer;
}

function cstring(value: string): Buffer {
  return Buffer.from(`${value}\0`, 'utf8');
}

/** ErrorResponse fields: repeated (code byte, C string), terminated by a zero byte. */
function parseError(body: Buffer): PgError {
  const fields = new Map<string, string>();
  let offset = 0;
  while (offset < body.length && body[offset] !== 0) {
    const end = body.indexOf(0, offset + 1);
    if (end === -1) break;
    fields.set(String.fromCharCode(body[offset] ?? 0), body.toString('utf8', offset + 1, end));
    offset = end + 1;
  }
  return new PgError(fields.get('C') ?? 'unknown', fields.get('M') ?? 'unknown server error');
}

function unexpected(message: Message, expecting: string): PgError {
  return new PgError('protocol', `expected ${expecting}, got message '${message.type}'`);
}

/** Parses a SCRAM attribute list such as "r=...,s=...,i=4096". */
function scramAttributes(text: string): Map<string, string> {
  const attributes = new Map<string, string>();
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) attributes.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return attributes;
}

const hmac = (key: Buffer, data: string): Buffer => createHmac('sha256', key).update(data, 'utf8').digest();

/** Connects and runs the SCRAM exchange up to the server's server-first message (so the server has already
 *  read the role's password verifier), then pauses. Rejects with an Error whose `code` is the SQLSTATE if
 *  the server answers with an ErrorResponse. */
export async function beginLogin(options: LoginOptions): Promise<PausedLogin> {
  const plain = connect({ host: options.host, port: options.port });
  let socket: Socket = plain;
  try {
    await new Promise<void>((resolve, reject) => {
      plain.once('connect', resolve);
      plain.once('error', reject);
    });
    if (options.tls) socket = await startTls(plain, options.host, options.tls.ca);
  } catch (error) {
    socket.destroy();
    plain.destroy();
    throw error;
  }
  const reader = new MessageReader(socket);
  try {
    // StartupMessage: no type byte; int32 length, int32 protocol 3.0, name/value pairs, final zero byte.
    const params = ['user', options.user, 'database', options.database, 'application_name', 'raw-pg-test'];
    const startupBody = Buffer.concat([int32(196608), ...params.map(cstring), Buffer.from([0])]);
    socket.write(Buffer.concat([int32(4 + startupBody.length), startupBody]));

    // AuthenticationSASL: int32 10, then a list of mechanism names.
    const sasl = await readAuth(reader, 'AuthenticationSASL');
    const mechanisms = sasl.subarray(4).toString('utf8').split('\0');
    if (sasl.readInt32BE(0) !== 10 || !mechanisms.includes('SCRAM-SHA-256')) {
      throw new PgError('protocol', `expected AuthenticationSASL with SCRAM-SHA-256, got code ${sasl.readInt32BE(0)}`);
    }

    // SASLInitialResponse: mechanism, int32 length, client-first-message. Empty username, as libpq sends.
    const clientNonce = randomBytes(18).toString('base64');
    const clientFirstBare = `n=,r=${clientNonce}`;
    const clientFirst = Buffer.from(`n,,${clientFirstBare}`, 'utf8');
    socket.write(frontendMessage('p', Buffer.concat([cstring('SCRAM-SHA-256'), int32(clientFirst.length), clientFirst])));

    // AuthenticationSASLContinue: int32 11, then server-first-message "r=...,s=...,i=...".
    const cont = await readAuth(reader, 'AuthenticationSASLContinue');
    if (cont.readInt32BE(0) !== 11) throw new PgError('protocol', `expected SASLContinue, got code ${cont.readInt32BE(0)}`);
    const serverFirst = cont.subarray(4).toString('utf8');
    const attributes = scramAttributes(serverFirst);
    const serverNonce = attributes.get('r') ?? '';
    const salt = Buffer.from(attributes.get('s') ?? '', 'base64');
    const iterations = Number(attributes.get('i'));
    if (!serverNonce.startsWith(clientNonce) || salt.length === 0 || !Number.isInteger(iterations) || iterations < 1) {
      throw new PgError('protocol', `malformed server-first message: ${serverFirst}`);
    }

    return pausedLogin(socket, reader, options.password, clientFirstBare, serverFirst, serverNonce, salt, iterations);
  } catch (error) {
    socket.destroy();
    throw error;
  }
}

/**
 * SSLRequest (int32 length 8, int32 80877103); the server answers one byte, 'S' (TLS follows on this socket) or
 * 'N' (no TLS here). Resolves with the TLS socket once its handshake has passed the certificate checks.
 */
async function startTls(socket: Socket, host: string, ca: string | Buffer): Promise<Socket> {
  const answer = await new Promise<string>((resolve, reject) => {
    socket.once('data', (chunk: Buffer) => {
      socket.removeListener('error', reject);
      socket.removeListener('close', closed);
      // Nothing else may come before the handshake (CVE-2021-23222: bytes sent before it must not be trusted).
      if (chunk.length !== 1) reject(new PgError('protocol', `expected one byte answering SSLRequest, got ${chunk.length}`));
      else resolve(String.fromCharCode(chunk[0] ?? 0));
    });
    const closed = () => reject(new PgError('closed', 'server closed the connection before answering SSLRequest'));
    socket.once('error', reject);
    socket.once('close', closed);
    socket.write(Buffer.concat([int32(8), int32(80877103)]));
  });
  if (answer !== 'S') throw new PgError('protocol', `the server does not offer TLS (answered '${answer}' to SSLRequest)`);
  socket.pause(); // no byte is lost between the answer above and the TLS socket taking over
  const secure = connectTls({ socket, ca, host, ...(isIP(host) ? {} : { servername: host }) });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', () => {
      secure.removeListener('error', reject);
      resolve();
    });
    secure.once('error', reject);
  });
  return secure;
}

/** Reads an Authentication ('R') message body, turning an ErrorResponse into a rejected PgError. */
async function readAuth(reader: MessageReader, expecting: string): Promise<Buffer> {
  for (;;) {
    const message = await reader.next();
    if (message.type === 'R') return message.body;
    if (message.type === 'E') throw parseError(message.body);
    if (message.type === 'N' || message.type === 'v') continue; // NoticeResponse, NegotiateProtocolVersion
    throw unexpected(message, expecting);
  }
}

function pausedLogin(
  socket: Socket,
  reader: MessageReader,
  password: string,
  clientFirstBare: string,
  serverFirst: string,
  serverNonce: string,
  salt: Buffer,
  iterations: number,
): PausedLogin {
  let session = false;
  let finished = false;

  async function finish(): Promise<FinishResult> {
    if (finished) throw new PgError('protocol', 'finish() called twice');
    finished = true;

    const saltedPassword = await pbkdf2Async(password, salt, iterations, 32, 'sha256');
    const clientKey = hmac(saltedPassword, 'Client Key');
    const storedKey = createHash('sha256').update(clientKey).digest();
    const clientFinalWithoutProof = `c=biws,r=${serverNonce}`; // biws = base64("n,,"): no channel binding
    const authMessage = `${clientFirstBare},${serverFirst},${clientFinalWithoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    const proof = Buffer.from(clientKey.map((byte, i) => byte ^ (clientSignature[i] ?? 0)));
    const serverSignature = hmac(hmac(saltedPassword, 'Server Key'), authMessage);

    try {
      // The server may already have closed the socket (e.g. authentication_timeout); the reader reports it.
      if (!socket.destroyed) socket.write(frontendMessage('p', Buffer.from(`${clientFinalWithoutProof},p=${proof.toString('base64')}`, 'utf8')));
      for (;;) {
        const message = await reader.next();
        switch (message.type) {
          case 'R': {
            const code = message.body.readInt32BE(0);
            if (code === 12) {
              // AuthenticationSASLFinal: "v=<server signature>" proves the server knew the same verifier.
              const verifier = scramAttributes(message.body.subarray(4).toString('utf8')).get('v');
              if (verifier !== serverSignature.toString('base64')) throw new PgError('protocol', 'server signature mismatch');
            } else if (code !== 0) {
              throw new PgError('protocol', `unexpected authentication code ${code}`);
            }
            break;
          }
          case 'S': // ParameterStatus
          case 'K': // BackendKeyData
          case 'N': // NoticeResponse
            break;
          case 'Z':
            session = true;
            return { ok: true };
          case 'E': {
            const error = parseError(message.body);
            socket.destroy();
            return { ok: false, code: error.code, message: error.message };
          }
          default:
            throw unexpected(message, 'authentication result');
        }
      }
    } catch (error) {
      if (error instanceof PgError && error.code === 'closed') return { ok: false, code: 'closed', message: error.message };
      socket.destroy();
      throw error;
    }
  }

  async function query(sql: string): Promise<string | null> {
    if (!session) throw new PgError('protocol', 'no session: finish() did not succeed');
    socket.write(frontendMessage('Q', cstring(sql)));
    let first: string | null | undefined;
    let failure: PgError | undefined;
    for (;;) {
      const message = await reader.next();
      switch (message.type) {
        case 'D': {
          // DataRow: int16 column count, then per column int32 length (-1 = NULL) and bytes.
          if (first === undefined && message.body.readInt16BE(0) > 0) {
            const length = message.body.readInt32BE(2);
            first = length === -1 ? null : message.body.toString('utf8', 6, 6 + length);
          }
          break;
        }
        case 'E':
          failure ??= parseError(message.body);
          break;
        case 'Z':
          if (failure) throw failure;
          return first ?? null;
        default: // RowDescription, CommandComplete, EmptyQueryResponse, NoticeResponse, ParameterStatus...
          break;
      }
    }
  }

  function close(): void {
    try {
      if (session && !socket.destroyed) {
        session = false;
        socket.end(frontendMessage('X', Buffer.alloc(0)), () => socket.destroy());
      } else {
        socket.destroy();
      }
    } catch {
      // close() never throws
    }
  }

  return { finish, query, close };
}
