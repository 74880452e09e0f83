// Errors of the lower layers that explain themselves in their message (a reason, image, layer and cause):
// the CLI prints their message in one line instead of a stack.
const USER_FACING = new Set(['PullError', 'ImageCorruptError', 'CloneError', 'ImportError', 'RegistryError', 'ImageFormatError', 'ContentError', 'AppleLz4Error', 'DecodedMismatchError', 'LocalApiError']);

export function isUserFacing(err: unknown): boolean {
  return err instanceof Error && USER_FACING.has(err.name);
}
