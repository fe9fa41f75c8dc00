// @vitest-environment node
import { describe, expect, it } from "vitest";
import * as x509 from "@peculiar/x509";
import { webcrypto } from "node:crypto";
import { makeCsr, pem, sha256Of } from "../src/api/csr";

describe("CSRs made in the browser", () => {
  it("are P-256 PKCS#10 requests whose signature verifies", async () => {
    const c = webcrypto as unknown as Crypto;
    const req = await makeCsr("coder 70b!", c);
    const der = Uint8Array.from(atob(req.csrDerBase64), (ch) => ch.charCodeAt(0));
    const csr = new x509.Pkcs10CertificateRequest(der);
    expect(csr.subject).toBe("CN=coder-70b-");
    expect(await csr.verify(c)).toBe(true);
    expect((csr.publicKey.algorithm as EcKeyAlgorithm).namedCurve).toBe("P-256");
    expect(req.privateKeyPem.startsWith("-----BEGIN PRIVATE KEY-----\n")).toBe(true);
    // Canonical standard base64, as the API's pattern requires.
    expect(req.csrDerBase64).toMatch(/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/);
  });

  it("wraps PEM at 64 columns and reads sha256 digests", () => {
    const p = pem("CERTIFICATE", new Uint8Array(100));
    expect(p.split("\n")[1]!.length).toBe(64);
    expect(sha256Of(`sha256:${"AB".repeat(32)}`)).toBe("ab".repeat(32));
    expect(sha256Of("sha512:00")).toBeNull();
  });
});
