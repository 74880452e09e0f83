// AgentError: a failure with a Kubernetes-style reason, thrown on both sides of the protocol. In the guest
// it becomes a RESPONSE's error body; in the host client it is what a request rejects with.
import type { AgentErrorBody, AgentErrorReason } from './messages.ts';

export class AgentError extends Error {
  override readonly name = 'AgentError';
  constructor(readonly reason: AgentErrorReason, message: string) {
    super(message);
  }

  toBody(): AgentErrorBody {
    return { reason: this.reason, message: this.message };
  }

  static fromBody(body: AgentErrorBody): AgentError {
    return new AgentError(body.reason, body.message);
  }
}

/** Any thrown value as an error body; what is not an AgentError is an Internal error with its message. */
export function errorBody(err: unknown): AgentErrorBody {
  if (err instanceof AgentError) return err.toBody();
  return { reason: 'Internal', message: err instanceof Error ? err.message : String(err) };
}
