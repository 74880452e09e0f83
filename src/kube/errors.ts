// Errors of the Kubernetes side that the CLI turns into one line for the user.

/** A kubeconfig problem (file, context, credentials, exec plugin); the message names the file. */
export class KubeconfigError extends Error {
  override name = 'KubeconfigError';
}
