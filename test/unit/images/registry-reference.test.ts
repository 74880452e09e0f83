// Image references are read as docker reads them: Docker Hub defaults, registries with ports, tags and
// digests together, and one clear error per kind of malformed reference.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseImageRef } from '../../../src/images/registry/reference.ts';
import { RegistryError } from '../../../src/images/registry/errors.ts';

const DIGEST = `sha256:${'a'.repeat(64)}`;

function parts(text: string): Record<string, string | undefined> {
  const r = parseImageRef(text);
  return { registry: r.registry, repository: r.repository, tag: r.tag, digest: r.digest, reference: r.reference, text: r.toString() };
}

test('a single name is a Docker Hub official image at registry-1.docker.io, tag latest', () => {
  assert.deepEqual(parts('ubuntu'), {
    registry: 'registry-1.docker.io',
    repository: 'library/ubuntu',
    tag: 'latest',
    digest: undefined,
    reference: 'latest',
    text: 'docker.io/library/ubuntu:latest',
  });
  assert.equal(parseImageRef('docker.io/ubuntu:22.04').repository, 'library/ubuntu');
  assert.equal(parseImageRef('index.docker.io/library/ubuntu').registry, 'registry-1.docker.io');
  assert.deepEqual(parts('cirruslabs/macos-sequoia-base:latest').repository, 'cirruslabs/macos-sequoia-base');
  assert.equal(parseImageRef('cirruslabs/macos-sequoia-base').registry, 'registry-1.docker.io');
});

test('a first component with a dot, a port or "localhost" is the registry host', () => {
  assert.deepEqual(parts('localhost:5000/x'), {
    registry: 'localhost:5000', repository: 'x', tag: 'latest', digest: undefined, reference: 'latest', text: 'localhost:5000/x:latest',
  });
  assert.equal(parseImageRef('localhost/x').registry, 'localhost');
  assert.equal(parseImageRef('127.0.0.1:41234/team/vm:1.0').registry, '127.0.0.1:41234');
  assert.equal(parseImageRef('ghcr.io/cirruslabs/macos:latest').repository, 'cirruslabs/macos');
  assert.equal(parseImageRef('[::1]:5000/x').registry, '[::1]:5000');
});

test('tag and digest together: the manifest is fetched by digest, the tag kept for messages', () => {
  const r = parseImageRef(`host.example/ns/x:tag@${DIGEST}`);
  assert.equal(r.registry, 'host.example');
  assert.equal(r.repository, 'ns/x');
  assert.equal(r.tag, 'tag');
  assert.equal(r.digest, DIGEST);
  assert.equal(r.reference, DIGEST);
  assert.equal(r.toString(), `host.example/ns/x:tag@${DIGEST}`);
  const byDigest = parseImageRef(`127.0.0.1:5000/x@${DIGEST}`);
  assert.equal(byDigest.tag, undefined, 'no implicit "latest" next to a digest');
  assert.equal(byDigest.toString(), `127.0.0.1:5000/x@${DIGEST}`);
});

test('malformed references are refused with InvalidReference and say what is wrong', () => {
  const cases: [string, RegExp][] = [
    ['', /empty/],
    ['Ubuntu', /lowercase/],
    ['host:5000/Team/x', /lowercase/],
    ['x:tag with space', /malformed tag/],
    ['x:-tag', /malformed tag/],
    [`x@sha256:${'A'.repeat(64)}`, /64 lowercase hex/],
    ['x@sha256:abc', /malformed digest/],
    ['a'.repeat(64), /image ID/],
    ['host:5000/', /no repository/],
    ['host:5000/x//y', /path component ""/],
    ['host:5000/x_-y', /path component "x_-y"/],
    ['bad_host.example:5000/x', /registry host/],
    [`example.com/${'a'.repeat(260)}`, /longer than 255/],
  ];
  for (const [text, why] of cases) {
    assert.throws(
      () => parseImageRef(text),
      (err: unknown) => err instanceof RegistryError && err.reason === 'InvalidReference' && why.test(err.message) && !err.message.includes('\n'),
      `"${text}" should be refused with ${String(why)}`,
    );
  }
});
