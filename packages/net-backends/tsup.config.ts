import { defineConfig } from 'tsup';
import { libraryConfig } from '../../tsup.shared.js';

export default defineConfig(libraryConfig({ entry: ['src/index.ts', 'src/testing.ts'] }));
