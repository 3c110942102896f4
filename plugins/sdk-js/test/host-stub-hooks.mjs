const STUB = `
globalThis.hostCalls ??= [];
const record = (name) => (...args) => {
  globalThis.hostCalls.push([name, ...args]);
  const answer = globalThis.hostAnswers?.[name];
  if (answer instanceof Error || (answer && answer.payload)) throw answer;
  return answer;
};
export const log = record('log');
export const get = record('get');
export const command = record('command');
export const send = record('send');
export const getServerInfo = record('getServerInfo');
export const query = record('query');
`;

export async function resolve(specifier, context, next) {
  if (specifier.startsWith('wasm-broker:plugin/')) {
    return { url: `data:text/javascript,${encodeURIComponent(STUB)}`, shortCircuit: true };
  }
  return next(specifier, context);
}
