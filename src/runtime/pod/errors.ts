// The one error the pure pod code throws: a Kubernetes-style reason (CamelCase, for the pod status and the
// Event) and a message that names the field and says what to do. The controller turns it into both, in one
// place; nothing below it formats Kubernetes conditions.

export class PodSpecError extends Error {
  /**
   * @param reason e.g. `UnsupportedPodSpec`, `InvalidPodSpec`, `InvalidVmSize`, `CreateContainerConfigError`
   * @param message what is wrong, naming the field, e.g. `spec.hostNetwork: true is not supported ...`
   * @param problems every problem found when there were several (`message` joins them)
   */
  constructor(
    readonly reason: string,
    message: string,
    readonly problems: readonly string[] = [message],
  ) {
    super(message);
    this.name = 'PodSpecError';
  }
}
