// Owns every secret the service makes or checks: the admin key, app passwords and their SCRAM verifiers.
import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto';
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
