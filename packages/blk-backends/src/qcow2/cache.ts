import { BlockError } from '../errors.js';
import type { HostFile } from '../file.js';

/** One cluster-sized metadata table (an L2 table or a refcount block), big-endian. */
export class Table {
  readonly dv: DataView;
  dirty = false;
  constructor(
    readonly offset: number,
    readonly buf: Uint8Array,
  ) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
}

/**
 * A write-back cache of cluster-sized tables, least recently used first out.
 * Clean tables are evicted past `capacity`; dirty ones stay until the owner
 * writes them back in the order integrity needs (`dirtyTables`/`markClean`),
 * which it does when `overCapacity` says so. Loads of one table are shared.
 */
export class TableCache {
  readonly #map = new Map<number, Table>();
  readonly #loading = new Map<number, Promise<Table>>();
  #dirty = 0;

  constructor(
    readonly file: HostFile,
    readonly tableSize: number,
    readonly capacity: number,
    readonly validate: (offset: number) => void,
  ) {}

  /** The table at `offset` if it is cached (touching it as recently used). */
  peek(offset: number): Table | undefined {
    const t = this.#map.get(offset);
    if (t !== undefined) {
      this.#map.delete(offset);
      this.#map.set(offset, t);
    }
    return t;
  }

  get(offset: number): Table | Promise<Table> {
    return this.peek(offset) ?? this.#load(offset);
  }

  #load(offset: number): Promise<Table> {
    let p = this.#loading.get(offset);
    if (p !== undefined) return p;
    p = (async () => {
      this.validate(offset);
      const buf = new Uint8Array(this.tableSize);
      await this.file.read(buf, offset);
      const t = this.#map.get(offset) ?? new Table(offset, buf);
      this.#insert(t);
      return t;
    })();
    this.#loading.set(offset, p);
    const done = (): void => {
      this.#loading.delete(offset);
    };
    p.then(done, done);
    return p;
  }

  /** A new all-zero table at `offset` (a fresh allocation), dirty. */
  create(offset: number): Table {
    const t = new Table(offset, new Uint8Array(this.tableSize));
    this.#insert(t);
    this.markDirty(t);
    return t;
  }

  #insert(t: Table): void {
    this.#map.set(t.offset, t);
    if (this.#map.size <= this.capacity) return;
    // Evict clean tables, oldest first; a bounded walk over the map.
    for (const [off, old] of this.#map) {
      if (this.#map.size <= this.capacity) break;
      if (!old.dirty && old !== t) this.#map.delete(off);
    }
  }

  markDirty(t: Table): void {
    if (this.#map.get(t.offset) !== t) this.#map.set(t.offset, t);
    if (!t.dirty) {
      t.dirty = true;
      this.#dirty++;
    }
  }

  get dirtyCount(): number {
    return this.#dirty;
  }

  get overCapacity(): boolean {
    return this.#dirty > this.capacity / 2;
  }

  dirtyTables(): Table[] {
    const out: Table[] = [];
    for (const t of this.#map.values()) if (t.dirty) out.push(t);
    return out.sort((a, b) => a.offset - b.offset);
  }

  async writeBack(): Promise<number> {
    const tables = this.dirtyTables();
    for (const t of tables) {
      await this.file.write(t.buf, t.offset);
      t.dirty = false;
      this.#dirty--;
    }
    return tables.length;
  }

  has(offset: number): boolean {
    return this.#map.has(offset);
  }

  /** Drop a table (it was freed or moved). Refuses to drop unsaved changes. */
  drop(offset: number): void {
    const t = this.#map.get(offset);
    if (t?.dirty) throw new BlockError('corrupt', `internal: dropping dirty table at ${offset}`);
    this.#map.delete(offset);
  }

  clear(): void {
    this.#map.clear();
    this.#dirty = 0;
  }
}

/** A readers–writer lock, first come first served: shared for reads and in-place writes, exclusive for allocation. */
export class RwLock {
  #readers = 0;
  #writer = false;
  readonly #queue: { exclusive: boolean; resolve: () => void }[] = [];

  shared(): Promise<void> | undefined {
    if (!this.#writer && this.#queue.length === 0) {
      this.#readers++;
      return undefined;
    }
    return new Promise((resolve) => this.#queue.push({ exclusive: false, resolve }));
  }

  exclusive(): Promise<void> | undefined {
    if (!this.#writer && this.#readers === 0 && this.#queue.length === 0) {
      this.#writer = true;
      return undefined;
    }
    return new Promise((resolve) => this.#queue.push({ exclusive: true, resolve }));
  }

  releaseShared(): void {
    this.#readers--;
    this.#wake();
  }

  releaseExclusive(): void {
    this.#writer = false;
    this.#wake();
  }

  #wake(): void {
    while (this.#queue.length > 0 && !this.#writer) {
      const next = this.#queue[0]!;
      if (next.exclusive) {
        if (this.#readers > 0) return;
        this.#queue.shift();
        this.#writer = true;
        next.resolve();
        return;
      }
      this.#queue.shift();
      this.#readers++;
      next.resolve();
    }
  }
}
