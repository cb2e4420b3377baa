#!/usr/bin/env node
import { main } from './img.js';

process.exitCode = await main(process.argv.slice(2));
