// Owns a bound on how many long operations of one kind run at once (backups and restores; rotations), so that
// no burst of them, and no tenant who stalls its own, can take every database connection the service has.
import { OperationsBusyError } from '../shared/errors.js';

export class Slots {
  private free: number;
  private readonly waiting: Array<() => void> = [];
  private readonly what: string;

  /** `what` names the operations in the 503 a caller gets when no slot frees up in time. */
  constructor(size: number, what: string) {
    this.free = size;
    this.what = what;
  }

  /**
   * Runs `work` in a slot. When every slot is taken, waits up to `waitMs` for one (0: not at all), then
   * throws OperationsBusyError (503 with Retry-After).
   */
  async run<T>(work: () => Promise<T>, waitMs: number): Promise<T> {
    if (this.free > 0) this.free--;
    else await this.waitForSlot(waitMs);
    try {
      return await work();
    } finally {
      const next = this.waiting.shift();
      if (next) next(); // the slot passes straight to the next in line
      else this.free++;
    }
  }

  private waitForSlot(waitMs: number): Promise<void> {
    if (waitMs <= 0) return Promise.reject(new OperationsBusyError(this.what));
    return new Promise((resolve, reject) => {
      const granted = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiting.splice(this.waiting.indexOf(granted), 1);
        reject(new OperationsBusyError(this.what));
      }, waitMs);
      this.waiting.push(granted);
    });
  }
}
