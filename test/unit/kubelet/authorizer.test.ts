// The kubelet's request attributes (pkg/kubelet/server/auth.go, 1.36 with fine-grained authorization),
// its Forbidden message, and the SubjectAccessReview cache (allowed 5 min, denied 30 s, bounded).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  apiVerb, authorizeAll, requestAttributes, reviewSpec, subresourcesFor, WebhookAuthorizer, type SubjectAccessReviewSpec, type SubjectAccessReviewStatus,
} from '../../../src/kubelet/auth/authorizer.ts';

const user = { name: 'jane', uid: 'u-1', groups: ['devs', 'system:authenticated'], extra: { scopes: ['a'] } };

test('HTTP methods become API verbs as the kubelet maps them', () => {
  assert.deepEqual(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'].map(apiVerb), ['get', 'get', 'create', 'update', 'patch', 'delete', '']);
});

test('paths map to nodes subresources, with the fine-grained ones falling back to proxy', () => {
  const cases: Array<[string, string[]]> = [
    ['/stats/summary', ['stats']],
    ['/stats', ['stats']],
    ['/statsx', ['proxy']],
    ['/metrics', ['metrics']],
    ['/metrics/resource', ['metrics']],
    ['/metrics/cadvisor', ['metrics']],
    ['/logs/', ['log']],
    ['/logs/messages', ['log']],
    ['/checkpoint/ns/pod/c', ['checkpoint']],
    ['/statusz', ['statusz']],
    ['/flagz', ['configz']],
    ['/pods', ['pods', 'proxy']],
    ['/pods/', ['pods', 'proxy']],
    ['/runningpods/', ['pods', 'proxy']],
    ['/runningpods', ['pods', 'proxy']],
    ['/healthz', ['healthz', 'proxy']],
    ['/healthz/ping', ['healthz', 'proxy']],
    ['/configz', ['configz', 'proxy']],
    ['/spec/', ['proxy']],
    ['/exec/default/web/main', ['proxy']],
    ['/attach/default/web/main', ['proxy']],
    ['/portForward/default/web', ['proxy']],
    ['/containerLogs/default/web/main', ['proxy']],
    ['/run/default/web/main', ['proxy']],
    ['/', ['proxy']],
  ];
  for (const [path, want] of cases) assert.deepEqual(subresourcesFor(path), want, path);
});

test('attributes name the node, resource nodes, version v1, and carry the user', () => {
  const attrs = requestAttributes('mac-1', user, 'POST', '/exec/default/web/main');
  assert.deepEqual(attrs, [{ user, verb: 'create', resource: 'nodes', name: 'mac-1', subresource: 'proxy', apiVersion: 'v1', path: '/exec/default/web/main' }]);
  assert.equal(requestAttributes('mac-1', user, 'GET', '/exec/default/web/main')[0]!.verb, 'get'); // a WebSocket exec
  assert.deepEqual(reviewSpec(attrs[0]!), {
    user: 'jane', uid: 'u-1', groups: ['devs', 'system:authenticated'], extra: { scopes: ['a'] },
    resourceAttributes: { verb: 'create', version: 'v1', resource: 'nodes', subresource: 'proxy', name: 'mac-1' },
  });
});

test('the first allowed subresource lets a request through; a refusal names them all', async () => {
  const attrs = requestAttributes('mac-1', user, 'GET', '/pods');
  const onlyProxy = { authorize: async (a: { subresource: string }) => ({ decision: a.subresource === 'proxy' ? ('allow' as const) : ('no-opinion' as const), reason: '' }) };
  assert.deepEqual(await authorizeAll(onlyProxy, attrs), { allowed: true });
  const none = { authorize: async () => ({ decision: 'no-opinion' as const, reason: 'no RBAC policy matched' }) };
  assert.deepEqual(await authorizeAll(none, attrs), {
    allowed: false, status: 403, reason: 'no RBAC policy matched',
    message: 'Forbidden (user=jane, verb=get, resource=nodes, subresource(s)=[pods proxy])\n',
  });
  const broken = { authorize: async () => { throw new Error('connection refused'); } };
  assert.deepEqual(await authorizeAll(broken, attrs), {
    allowed: false, status: 500, reason: 'connection refused', message: 'Authorization error (user=jane, verb=get, resource=nodes, subresource=pods)',
  });
});

function fakeApi(answer: (spec: SubjectAccessReviewSpec) => SubjectAccessReviewStatus) {
  const calls: SubjectAccessReviewSpec[] = [];
  return { calls, review: async (spec: SubjectAccessReviewSpec) => { calls.push(spec); return answer(spec); } };
}

test('SubjectAccessReview answers are cached: allowed for 5 minutes, denied for 30 seconds', async () => {
  let now = 1_000_000;
  let allow = true;
  const api = fakeApi(() => ({ allowed: allow }));
  const authz = new WebhookAuthorizer({ review: api.review, clock: () => now });
  const [a] = requestAttributes('mac-1', user, 'GET', '/stats/summary');
  assert.equal((await authz.authorize(a!)).decision, 'allow');
  allow = false;
  now += 5 * 60_000 - 1;
  assert.equal((await authz.authorize(a!)).decision, 'allow', 'still cached');
  assert.equal(api.calls.length, 1);
  now += 1;
  assert.equal((await authz.authorize(a!)).decision, 'no-opinion', 'expired: asked again');
  assert.equal(api.calls.length, 2);
  allow = true;
  now += 30_000 - 1;
  assert.equal((await authz.authorize(a!)).decision, 'no-opinion', 'the refusal is cached');
  now += 1;
  assert.equal((await authz.authorize(a!)).decision, 'allow');
  assert.equal(api.calls.length, 3);
});

test('the cache key is the whole spec; concurrent look-ups share one review; the cache is bounded', async () => {
  const api = fakeApi(() => ({ allowed: true }));
  const authz = new WebhookAuthorizer({ review: api.review, maxEntries: 2 });
  const one = requestAttributes('mac-1', user, 'GET', '/pods')[0]!;
  await Promise.all([authz.authorize(one), authz.authorize(one), authz.authorize(one)]);
  assert.equal(api.calls.length, 1);
  await authz.authorize({ ...one, user: { ...user, groups: ['other'] } });
  await authz.authorize({ ...one, verb: 'create' });
  assert.equal(api.calls.length, 3);
  await authz.authorize(one); // pushed out by the two newer ones
  assert.equal(api.calls.length, 4);
});

test('a failed review is not cached; denied and allowed together is an error', async () => {
  let fail = true;
  const authz = new WebhookAuthorizer({ review: async () => { if (fail) throw new Error('timeout'); return { allowed: true, denied: true }; } });
  const a = requestAttributes('mac-1', user, 'GET', '/pods')[0]!;
  await assert.rejects(authz.authorize(a), /timeout/);
  fail = false;
  await assert.rejects(authz.authorize(a), /both allow and deny/);
  const denier = new WebhookAuthorizer({ review: async () => ({ denied: true, reason: 'policy says no' }) });
  assert.deepEqual(await denier.authorize(a), { decision: 'deny', reason: 'policy says no' });
});
