// SCRAM-SHA-256 as docs/protocol.md 8.2 defines it, computed in the page with WebCrypto:
// the password never leaves it (only the proof does). WebCrypto exists only in a secure
// context: an https:// page, or one opened on this machine (http://127.0.0.1, localhost).

const enc = new TextEncoder();

function subtle() {
  if (!globalThis.crypto || !crypto.subtle) {
    throw new Error("INSECURE_CONTEXT");
  }
  return crypto.subtle;
}

async function hmac(key, data) {
  const k = await subtle().importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle().sign("HMAC", k, data));
}

async function sha256(data) {
  return new Uint8Array(await subtle().digest("SHA-256", data));
}

function part(bytes) {
  const out = new Uint8Array(2 + bytes.length);
  new DataView(out.buffer).setUint16(0, bytes.length);
  out.set(bytes, 2);
  return out;
}

function concat(...arrays) {
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let i = 0;
  for (const a of arrays) { out.set(a, i); i += a.length; }
  return out;
}

export function nonce(n = 24) {
  return crypto.getRandomValues(new Uint8Array(n));
}

export function authMessage(identity, clientNonce, serverNonce, salt, iterations) {
  const it = new Uint8Array(4);
  new DataView(it.buffer).setUint32(0, iterations);
  return concat(part(enc.encode(identity)), part(clientNonce), part(serverNonce), part(salt), part(it));
}

// {proof, serverSignature} for one challenge.
export async function prove(identity, password, clientNonce, challenge) {
  const base = await subtle().importKey("raw", enc.encode(password), "PBKDF2", false, ["deriveBits"]);
  const salted = new Uint8Array(await subtle().deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: challenge.salt, iterations: challenge.iterations }, base, 256));
  const clientKey = await hmac(salted, enc.encode("Client Key"));
  const storedKey = await sha256(clientKey);
  const serverKey = await hmac(salted, enc.encode("Server Key"));
  const msg = authMessage(identity, clientNonce, challenge.server_nonce, challenge.salt, challenge.iterations);
  const clientSig = await hmac(storedKey, msg);
  const proof = clientKey.map((b, i) => b ^ clientSig[i]);
  const serverSignature = await hmac(serverKey, msg);
  return { proof, serverSignature };
}

export function sameBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}
