// Owns a small stock of fresh app passwords with their SCRAM verifiers, computed ahead of time off the request
// path (PBKDF2 with 4,096 iterations costs milliseconds of CPU). The stock lives only in this process's memory
// and each entry is handed out once; a restart simply starts a new stock.
import { newAppCredential, type AppCredential } from '../shared/secrets.js';

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
    return credential ?? newAppCredential();
  }

  /** Tops the stock up in the background, one at a time (the hashing runs on libuv's thread pool). */
  async refill(): Promise<void> {
    if (this.refilling) return;
    this.refilling = true;
    try {
      while (this.stock.length < this.size) this.stock.push(await newAppCredential());
    } finally {
      this.refilling = false;
    }
  }
}
