// Resolves a user as a container spec gives it ("name", "uid", "uid:gid", "name:group") to ids, from the
// guest's /etc/passwd and /etc/group, as container runtimes do: a numeric uid need not exist in passwd
// (it then gets gid 0 and HOME /), a name must.
import { readFileSync } from 'node:fs';

// Read synchronously: a thread-pool round trip costs more than the read under TCG (see process-spec.ts).
const readText = (file: string): string => {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
};
import { AgentError } from '../protocol/errors.ts';

export interface ResolvedUser {
  uid: number;
  gid: number;
  name: string | undefined;
  home: string;
}

interface PasswdEntry { name: string; uid: number; gid: number; home: string }

export async function resolveUser(spec: string, etc = '/etc'): Promise<ResolvedUser> {
  const [userPart = '', groupPart] = spec.split(':', 2);
  if (!userPart) throw new AgentError('InvalidArgument', `invalid user "${spec}": expected name, uid, uid:gid or name:group`);
  const passwd = parseColonFile(readText(`${etc}/passwd`)).map(
    (f): PasswdEntry => ({ name: f[0] ?? '', uid: Number(f[2]), gid: Number(f[3]), home: f[5] || '/' }),
  );
  let entry: PasswdEntry | undefined;
  let uid: number;
  if (/^\d+$/.test(userPart)) {
    uid = Number(userPart);
    entry = passwd.find((p) => p.uid === uid);
  } else {
    entry = passwd.find((p) => p.name === userPart);
    if (!entry) throw new AgentError('NotFound', `no user "${userPart}" in ${etc}/passwd`);
    uid = entry.uid;
  }
  let gid = entry?.gid ?? 0;
  if (groupPart !== undefined && groupPart !== '') {
    if (/^\d+$/.test(groupPart)) gid = Number(groupPart);
    else {
      const groups = parseColonFile(readText(`${etc}/group`));
      const group = groups.find((g) => g[0] === groupPart);
      if (!group) throw new AgentError('NotFound', `no group "${groupPart}" in ${etc}/group`);
      gid = Number(group[2]);
    }
  }
  return { uid, gid, name: entry?.name, home: entry?.home ?? '/' };
}

function parseColonFile(text: string): string[][] {
  return text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => l.split(':'));
}
