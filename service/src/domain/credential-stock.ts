// Owns a small stock of fresh app passwords with their SCRAM verifiers, computed ahead of time off the request
// path (PBKDF2 with 4,096 iterations costs milliseconds of CPU). The stock lives only in this process's memory
// and each entry is handed out once; a restart simply starts a new stock.
import { newAppPassword, scramSha256Verifier } from '../shared/secrets.js';

export interface AppCredential {
  password: string;
  verifier: string;
}

export async function newCredential(): Promise<AppCredential> {
  const password = newAppPassword();
  return { password, verifier: await scramSha256Verifier(password) };
}

export class CredentialStock {
  private readonly stock: AppCredential[] = [];
  private refilling = false;
  private readonly size: number;

  constructor(size: number) {
    this.size = size;
  }

  /** A credential never handed out before: from the stock when there is one, else made now. */
  async take(): Promise<AppCredential> {
    const credential = this.stock.pop();
    void this.refill();
    return credential ?? newCredential();
  }

  /** Tops the stock up in the background, one at a time (the hashing runs on libuv's thread pool). */
  async refill(): Promise<void> {
    if (this.refilling) return;
    this.refilling = true;
    try {
      while (this.stock.length < this.size) this.stock.push(await newCredential());
    } finally {
      this.refilling = false;
    }
  }
}
