// The one error type of the registry client. `reason` is a Kubernetes-style CamelCase word a pod Event or
// status can carry as is; the message is one line naming the operation, the image, the blob when there
// is one, and the cause, with the registry's own error code and message when it sent them.
import { STATUS_CODES } from 'node:http';

export type RegistryErrorReason =
  | 'InvalidReference'
  | 'InvalidCredentials'
  | 'CredentialHelperFailed'
  | 'Unauthorized'
  | 'Forbidden'
  | 'NotFound'
  | 'NameUnknown'
  | 'ManifestUnknown'
  | 'BlobUnknown'
  | 'BlobUploadUnknown'
  | 'BlobUploadInvalid'
  | 'ManifestInvalid'
  | 'ManifestTooLarge'
  | 'UnsupportedMediaType'
  | 'PlatformNotFound'
  | 'DigestMismatch'
  | 'SizeMismatch'
  | 'RangeInvalid'
  | 'TooManyRequests'
  | 'RegistryUnavailable'
  | 'ConnectionFailed'
  | 'CertificateInvalid'
  | 'Stalled'
  | 'Unsupported'
  | 'BadResponse'
  | 'Aborted';

/** What was being done, to whom: every message starts with it. */
export interface ErrorContext {
  /** e.g. "pull", "push", "mount", "resolve". */
  operation: string;
  /** The image reference as the user wrote it (normalized). */
  image: string;
  /** The blob (layer, config) or manifest digest, when the failure concerns one. */
  digest?: string;
  /** What the digest names; default "blob". */
  kind?: 'blob' | 'manifest';
}

/** One entry of the distribution-spec error body: {"errors":[{"code","message","detail"}]}. */
export interface RegistryErrorEntry {
  code: string;
  message?: string;
  detail?: unknown;
}

export interface RegistryErrorInit {
  reason: RegistryErrorReason;
  /** The cause, in words; becomes the end of the message. */
  detail: string;
  context?: ErrorContext;
  status?: number;
  registryErrors?: RegistryErrorEntry[];
  /** Worth trying again (the same request, or resuming where it stopped). */
  retryable?: boolean;
  /** The registry's Retry-After, in ms. */
  retryAfterMs?: number;
  /** The underlying error, kept as `cause`. */
  error?: unknown;
}

export class RegistryError extends Error {
  override readonly name = 'RegistryError';
  readonly reason: RegistryErrorReason;
  readonly operation?: string;
  readonly image?: string;
  readonly digest?: string;
  readonly status?: number;
  readonly registryErrors: RegistryErrorEntry[];
  readonly retryable: boolean;
  readonly retryAfterMs?: number;

  constructor(init: RegistryErrorInit) {
    super(formatMessage(init), init.error === undefined ? undefined : { cause: init.error });
    this.reason = init.reason;
    this.operation = init.context?.operation;
    this.image = init.context?.image;
    this.digest = init.context?.digest;
    this.status = init.status;
    this.registryErrors = init.registryErrors ?? [];
    this.retryable = init.retryable ?? false;
    this.retryAfterMs = init.retryAfterMs;
  }
}

function formatMessage(init: RegistryErrorInit): string {
  const c = init.context;
  const subject = c ? `${c.operation} ${c.image}${c.digest ? ` ${c.kind ?? 'blob'} ${c.digest}` : ''}: ` : '';
  // One line, whatever a registry or a credential helper put in its text.
  return `${subject}${init.detail}`.replace(/\s*[\r\n]+\s*/g, ' ');
}

// distribution-spec's error codes (plus distribution's RANGE_INVALID and UNAVAILABLE).
const CODE_REASONS: Record<string, RegistryErrorReason> = {
  BLOB_UNKNOWN: 'BlobUnknown',
  BLOB_UPLOAD_INVALID: 'BlobUploadInvalid',
  BLOB_UPLOAD_UNKNOWN: 'BlobUploadUnknown',
  DIGEST_INVALID: 'DigestMismatch',
  MANIFEST_BLOB_UNKNOWN: 'BlobUnknown',
  MANIFEST_INVALID: 'ManifestInvalid',
  MANIFEST_UNVERIFIED: 'ManifestInvalid',
  MANIFEST_UNKNOWN: 'ManifestUnknown',
  NAME_INVALID: 'InvalidReference',
  NAME_UNKNOWN: 'NameUnknown',
  SIZE_INVALID: 'SizeMismatch',
  TAG_INVALID: 'ManifestInvalid',
  UNAUTHORIZED: 'Unauthorized',
  DENIED: 'Forbidden',
  UNSUPPORTED: 'Unsupported',
  TOOMANYREQUESTS: 'TooManyRequests',
  RANGE_INVALID: 'RangeInvalid',
  UNAVAILABLE: 'RegistryUnavailable',
};

function reasonForStatus(status: number): RegistryErrorReason {
  if (status === 401) return 'Unauthorized';
  if (status === 403) return 'Forbidden';
  if (status === 404) return 'NotFound';
  if (status === 405) return 'Unsupported';
  if (status === 413) return 'ManifestTooLarge';
  if (status === 415) return 'UnsupportedMediaType';
  if (status === 416) return 'RangeInvalid';
  if (status === 429) return 'TooManyRequests';
  if (status >= 500) return 'RegistryUnavailable';
  return 'BadResponse';
}

/** Reads the distribution-spec error body; anything else yields no entries. */
export function parseRegistryErrors(body: string): RegistryErrorEntry[] {
  try {
    const parsed = JSON.parse(body) as { errors?: unknown };
    if (!Array.isArray(parsed.errors)) return [];
    return parsed.errors.flatMap((e: unknown) => {
      if (typeof e !== 'object' || e === null) return [];
      const { code, message, detail } = e as Record<string, unknown>;
      if (typeof code !== 'string') return [];
      return [{ code, message: typeof message === 'string' ? message : undefined, detail }];
    });
  } catch {
    return [];
  }
}

/** An error for an HTTP answer that is not what the operation expected. */
export function errorFromResponse(
  status: number,
  body: string,
  context: ErrorContext,
  opts: { retryAfterMs?: number; what?: string; hint?: string } = {},
): RegistryError {
  const registryErrors = parseRegistryErrors(body);
  const first = registryErrors[0];
  const byStatus = reasonForStatus(status);
  // 429 and 5xx say "try again" whatever code the body carries; otherwise the code is more precise.
  const retryable = status === 429 || status >= 500;
  const reason = retryable ? byStatus : ((first && CODE_REASONS[first.code]) ?? byStatus);
  const said = registryErrors.map((e) => (e.message ? `${e.code}: ${e.message}` : e.code)).join('; ');
  const plain = said ? '' : body.trim().slice(0, 200);
  const detail =
    `${opts.what ?? 'registry'} answered ${status} ${STATUS_CODES[status] ?? ''}`.trimEnd() +
    (said ? ` (${said})` : plain ? ` (${plain})` : '') +
    (opts.hint ? `; ${opts.hint}` : '');
  return new RegistryError({ reason, detail, context, status, registryErrors, retryable, retryAfterMs: opts.retryAfterMs });
}

// Network-level failures worth another attempt: the registry or the path to it may come back.
const RETRYABLE_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH',
]);

const CERTIFICATE_CODE = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|HOSTNAME_MISMATCH/;

export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Turns what undici or the OS threw into a RegistryError; a RegistryError passes through unchanged. */
export function errorFromNetwork(err: unknown, context: ErrorContext, where: string): RegistryError {
  if (err instanceof RegistryError) return err;
  const code = errorCode(err) ?? '';
  const text = err instanceof Error ? err.message : String(err);
  const make = (reason: RegistryErrorReason, detail: string, retryable: boolean): RegistryError =>
    new RegistryError({ reason, detail, context, retryable, error: err });
  if (code === 'UND_ERR_ABORTED' || (err instanceof Error && err.name === 'AbortError')) {
    return make('Aborted', `${where}: aborted`, false);
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return make('Stalled', `${where}: no response headers in time`, true);
  if (code === 'UND_ERR_BODY_TIMEOUT') return make('Stalled', `${where}: the response body stalled`, true);
  if (code === 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH') {
    return make('SizeMismatch', `${where}: the content to upload does not have the declared size (${text})`, false);
  }
  if (CERTIFICATE_CODE.test(code)) {
    return make('CertificateInvalid', `${where}: TLS certificate not trusted (${code}: ${text})`, false);
  }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) {
    return make('ConnectionFailed', `${where}: TLS handshake failed (${code}); is it a plain-HTTP registry?`, false);
  }
  if (RETRYABLE_CODES.has(code)) return make('ConnectionFailed', `${where}: ${text} (${code})`, true);
  return make('ConnectionFailed', `${where}: ${text}${code ? ` (${code})` : ''}`, false);
}
