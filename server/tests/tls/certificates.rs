//! A private CA made by the test and a certificate it signed for 127.0.0.1 and localhost, with
//! the openssl CLI: `ca.crt`, `server.crt`, `server.key` (shared with the HTTPS tests).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

/// A CA and a certificate it signed for 127.0.0.1 and localhost, made with the openssl CLI.
pub struct Certificates {
    pub dir: tempfile::TempDir,
}

impl Certificates {
    pub fn make() -> Certificates {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(
            dir.path().join("ca.cnf"),
            "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n\
             [dn]\nCN = Courier test CA\n\
             [v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("server.ext"),
            "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n\
             authorityKeyIdentifier = keyid, issuer\n",
        )
        .unwrap();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(dir.path(), &format!("req -x509 {ec} -config ca.cnf -keyout ca.key -out ca.crt -days 2"));
        openssl(dir.path(), &format!("req -new {ec} -subj /CN=localhost -keyout server.key -out server.csr"));
        openssl(
            dir.path(),
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -extfile server.ext \
             -days 2 -out server.crt",
        );
        Certificates { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `openssl` in `dir` with `args` (split at whitespace).
fn openssl(dir: &Path, args: &str) {
    let output = std::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (is it installed? ./scripts/setup.sh installs it)");
    assert!(output.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&output.stderr));
}
