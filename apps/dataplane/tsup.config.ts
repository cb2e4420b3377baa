import { defineConfig } from 'tsup';
import { libraryConfig } from '../../tsup.shared.js';

// An app: two entries (the main program and the guest worker), no .d.ts.
export default defineConfig(libraryConfig({ entry: ['src/main.ts', 'src/guest-worker.ts'], dts: false, splitting: true }));
