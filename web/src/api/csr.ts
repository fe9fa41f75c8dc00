// Key pair and certificate request made in the browser (WebCrypto, ECDSA P-256): the private key
// never leaves this page unless the user downloads it. The CA signs the CSR into a MIC.
import * as x509 from "@peculiar/x509";

const ALG = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

export interface Request {
  /** DER of the PKCS#10 request, standard base64 (what the API's `csr_der_base64` takes). */
  csrDerBase64: string;
  /** The private key, PKCS#8 PEM. */
  privateKeyPem: string;
}

export async function makeCsr(model: string, crypto: Crypto = globalThis.crypto): Promise<Request> {
  x509.cryptoProvider.set(crypto);
  const keys = await crypto.subtle.generateKey(ALG, true, ["sign", "verify"]);
  const cn = model.replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 64) || "model";
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${cn}`,
    keys,
    signingAlgorithm: ALG,
  });
  const pkcs8 = await crypto.subtle.exportKey("pkcs8", keys.privateKey);
  return {
    csrDerBase64: toBase64(new Uint8Array(csr.rawData)),
    privateKeyPem: pem("PRIVATE KEY", new Uint8Array(pkcs8)),
  };
}

export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function pem(label: string, der: Uint8Array): string {
  const b64 = toBase64(der);
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** The 64-hex SHA-256 inside a `sha256:<hex>` digest, if it is one. */
export function sha256Of(digest: string): string | null {
  const m = /^sha256:([0-9a-fA-F]{64})$/.exec(digest);
  return m ? m[1]!.toLowerCase() : null;
}
