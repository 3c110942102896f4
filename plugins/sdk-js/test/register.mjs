// Lets Node import wasm-broker-sdk.js outside a component, for its unit
// tests: the host's interfaces (`wasm-broker:plugin/*`) resolve to stubs
// that record what they are called with (`globalThis.hostCalls`).
import { register } from 'node:module';

register('./host-stub-hooks.mjs', import.meta.url);
