// An Ed25519 key pair in OpenSSH format for tests. ssh2's generateKeyPairSync('ed25519') writes a private
// key its own parseKey rejects ("Malformed OpenSSH private key") about once in 270 keys (11 of 3000 here),
// which made tests that use one fail now and then; a key is made again until it parses.
import ssh2 from 'ssh2';

export function ed25519Key(): { private: string; public: string } {
  for (;;) {
    const key = ssh2.utils.generateKeyPairSync('ed25519');
    if (!(ssh2.utils.parseKey(key.private) instanceof Error)) return key;
  }
}
