// Owns every secret the service makes or checks: the admin key (made at start, or pinned by ADMIN_KEY_FILE), app
// passwords and their SCRAM verifiers.
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { customAlphabet } from 'nanoid';

const ALPHANUMERIC = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** 40 characters of [A-Za-z0-9] ≈ 238 bits. */
export const newAdminKey = (): string => `sk_${customAlphabet(ALPHANUMERIC, 40)()}`;

/** The message of the one log line that carries the admin key, written once at boot (src/server.ts). */
export const adminKeyMessage = (key: string): string => `🔑 ADMIN KEY: ${key}`;
const ADMIN_KEY_MESSAGE = /^🔑 ADMIN KEY: (sk_[A-Za-z0-9]{40})$/;
const PRETTY_LINE = /^\[[^\]]+\] INFO \(\d+\): (.*)$/;

/**
 * The admin key, if `line` is the service's own key line (a JSON line whose msg is exactly the key message, or
 * pino-pretty's rendering of one); undefined for anything else, including text a tenant managed to put into
 * another line of the log.
 */
export function adminKeyInLogLine(line: string): string | undefined {
  let message: unknown;
  if (line.startsWith('{')) {
    try {
      message = (JSON.parse(line) as { msg?: unknown }).msg;
    } catch {
      return undefined;
    }
  } else {
    message = PRETTY_LINE.exec(line)?.[1];
  }
  return typeof message === 'string' ? ADMIN_KEY_MESSAGE.exec(message)?.[1] : undefined;
}

/** 32 characters of [A-Za-z0-9] ≈ 190 bits; needs no escaping in a connection string. */
export const newAppPassword: () => string = customAlphabet(ALPHANUMERIC, 32);

const sha256 = (data: string | Buffer): Buffer => createHash('sha256').update(data).digest();

/**
 * Compares a presented key with the real one in constant time. Both sides are hashed first, so neither the
 * comparison nor an early length check can tell an attacker how much of the key they got right.
 */
export function isAdminKey(presented: string | undefined, adminKey: string): boolean {
  if (typeof presented !== 'string') return false;
  return timingSafeEqual(sha256(presented), sha256(adminKey));
}

// --- The pinned admin key (ADMIN_KEY_FILE) --------------------------------------------------------------------

/** How the service knows the admin key: the SHA-256 digest of it, never the key itself once it has started. */
export interface AdminKeyDigest {
  digest: Buffer;
}

/** A pinned key read from ADMIN_KEY_FILE, and the form the file held it in. */
export interface PinnedAdminKey extends AdminKeyDigest {
  form: 'sha256' | 'key';
}

export class AdminKeyFileError extends Error {
  override name = 'AdminKeyFileError';
}

export const adminKeyDigest = (key: string): Buffer => sha256(key);

/** The two forms a pinned key file may hold, on one line: the key's hash (better), or the key itself. */
const PINNED_HASH = /^sha256:([0-9a-f]{64})$/i;
const PINNED_KEY = /^sk_[A-Za-z0-9]{32,128}$/;

/**
 * Reads ADMIN_KEY_FILE at start: `sha256:<64 hex digits>` (the SHA-256 of the key, so that the file need not
 * hold the secret) or the key itself (`sk_` and 32-128 letters and digits). Throws an AdminKeyFileError that
 * names the file and what is wrong with it, and never quotes what it holds.
 */
export function loadPinnedAdminKey(path: string): PinnedAdminKey {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new AdminKeyFileError(`ADMIN_KEY_FILE=${path} cannot be read (${code}): the service's user must be able to read it`);
  }
  const content = text.trim();
  if (content === '') {
    throw new AdminKeyFileError(`ADMIN_KEY_FILE=${path} is empty: write sha256:<the key's SHA-256 in hex> into it (README: "The admin key")`);
  }
  if (/^sha256:/i.test(content)) {
    const hex = PINNED_HASH.exec(content)?.[1];
    if (hex === undefined) throw new AdminKeyFileError(`ADMIN_KEY_FILE=${path} is malformed: it must hold sha256: followed by exactly 64 hexadecimal digits, on one line`);
    return { digest: Buffer.from(hex, 'hex'), form: 'sha256' };
  }
  if (!PINNED_KEY.test(content)) {
    throw new AdminKeyFileError(`ADMIN_KEY_FILE=${path} is malformed: it holds neither sha256:<64 hex digits> nor a key sk_<32 to 128 letters and digits>, on one line (README: "The admin key")`);
  }
  return { digest: sha256(content), form: 'key' };
}

/**
 * Compares a presented key with the admin key, known by its digest, in constant time: the presented key is
 * hashed first, so neither the comparison nor a length check can tell how much of it was right.
 */
export function matchesAdminKey(presented: string | undefined, adminKey: AdminKeyDigest): boolean {
  if (typeof presented !== 'string') return false;
  return timingSafeEqual(sha256(presented), adminKey.digest);
}
// --- end of the pinned admin key ------------------------------------------------------------------------------

const pbkdf2Async = promisify(pbkdf2);
const SCRAM_ITERATIONS = 4096;

/**
 * Computes the SCRAM-SHA-256 verifier Postgres stores for a password (RFC 7677, as in Postgres's
 * scram_build_secret). Sending the verifier instead of the password means the plaintext never reaches
 * Postgres, so no server log line can ever contain it. Passwords are ASCII, so SASLprep leaves them unchanged.
 */
export async function scramSha256Verifier(password: string, salt: Buffer = randomBytes(16)): Promise<string> {
  const saltedPassword = await pbkdf2Async(password, salt, SCRAM_ITERATIONS, 32, 'sha256');
  const clientKey = createHmac('sha256', saltedPassword).update('Client Key').digest();
  const serverKey = createHmac('sha256', saltedPassword).update('Server Key').digest();
  const storedKey = sha256(clientKey);
  return `SCRAM-SHA-256$${SCRAM_ITERATIONS}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** A fresh app password with its SCRAM verifier: what a login role is given (the verifier) and its holder told (the password). */
export interface AppCredential {
  password: string;
  verifier: string;
}

export async function newAppCredential(): Promise<AppCredential> {
  const password = newAppPassword();
  return { password, verifier: await scramSha256Verifier(password) };
}
