import type { Socket } from 'node:dgram';

/**
 * Preallocated send buffers for a UDP socket: a frame is copied into a slot (so
 * the caller may reuse its buffer at once) and the slot is freed when the kernel
 * took the datagram. libuv completes a socket's sends in order, so slots are freed
 * FIFO by one preallocated callback: nothing is allocated per datagram here. When
 * every slot is in flight, `acquire` fails and the back-end applies back-pressure.
 */
export class SendPool {
  private readonly slab: Buffer;
  private readonly slots: Buffer[];
  private head = 0;
  private inFlight = 0;
  /** Send failures reported by the kernel (counted by the back-end as txErrors). */
  errors = 0;
  lastError: Error | undefined;
  private readonly done = (err: Error | null): void => {
    this.inFlight--;
    this.head = (this.head + 1) % this.slots.length;
    if (err) {
      this.errors++;
      this.lastError = err;
    }
    this.onFree();
  };

  constructor(
    readonly slotSize: number,
    count: number,
    private readonly onFree: () => void,
  ) {
    this.slab = Buffer.alloc(slotSize * count);
    this.slots = Array.from({ length: count }, (_, i) => this.slab.subarray(i * slotSize, (i + 1) * slotSize));
  }

  get available(): number {
    return this.slots.length - this.inFlight;
  }

  /** The next free slot, or undefined when all are in flight. */
  acquire(): Buffer | undefined {
    if (this.inFlight === this.slots.length) return undefined;
    return this.slots[(this.head + this.inFlight) % this.slots.length];
  }

  /** Sends `len` bytes of the slot returned by the last `acquire`. */
  send(socket: Socket, slot: Buffer, len: number, port: number, address: string): void {
    this.inFlight++;
    try {
      socket.send(slot, 0, len, port, address, this.done);
    } catch (e) {
      // A synchronous failure (socket closed): the callback will not run.
      this.inFlight--;
      this.errors++;
      this.lastError = e as Error;
    }
  }
}
