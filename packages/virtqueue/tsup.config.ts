import { defineConfig } from 'tsup';
import { libraryConfig } from '../../tsup.shared.js';

// Two entries share classes (VirtqueueError): split chunks keep one copy of each.
export default defineConfig(libraryConfig({ entry: ['src/index.ts', 'src/testing.ts'], splitting: true }));
