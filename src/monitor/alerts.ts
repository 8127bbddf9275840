/**
 * Alerts: events an operator must hear about now, not find later in the audit log (a failed
 * OAuth refresh, say). One `AlertSink` interface; a generic JSON webhook and a Slack incoming
 * webhook implement it. Delivery is best effort, bounded in time, and never blocks a request;
 * a failed delivery is logged without the webhook URL (which is itself a secret).
 */

export interface Alert {
  type: string;
  severity: 'warning' | 'critical';
  message: string;
  tenant?: string | undefined;
  details?: Record<string, unknown>;
}

export interface AlertSink {
  readonly name: string;
  send(alert: Alert & { time: string }): Promise<void>;
}

async function post(url: string, body: unknown, timeoutMs: number): Promise<void> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  await response.arrayBuffer().catch(() => undefined);
  if (!response.ok) throw new Error(`answered ${response.status}`);
}

/** POSTs the alert as JSON: `{ type, severity, message, tenant, details, time, source }`. */
export function webhookSink(url: string, timeoutMs = 5_000): AlertSink {
  return {
    name: 'webhook',
    send: (alert) => post(url, { ...alert, source: 'bulwark' }, timeoutMs),
  };
}

/** Slack incoming webhook: one line of text. */
export function slackSink(url: string, timeoutMs = 5_000): AlertSink {
  return {
    name: 'slack',
    send: (alert) =>
      post(url, { text: `${alert.severity === 'critical' ? ':rotating_light:' : ':warning:'} Bulwark ${alert.type}${alert.tenant ? ` (tenant ${alert.tenant})` : ''}: ${alert.message}` }, timeoutMs),
  };
}

export interface Alerter {
  alert(alert: Alert): void;
  /** Resolves when every alert sent so far has been delivered or has failed. */
  settled(): Promise<void>;
}

export function createAlerter(sinks: readonly AlertSink[], onFailure: (sink: string, error: string) => void): Alerter {
  const pending = new Set<Promise<void>>();
  return {
    alert(alert) {
      const stamped = { ...alert, time: new Date().toISOString() };
      for (const sink of sinks) {
        const delivery = sink.send(stamped).catch((err: unknown) => onFailure(sink.name, (err as Error).name === 'TimeoutError' ? 'timed out' : (err as Error).message));
        pending.add(delivery);
        void delivery.finally(() => pending.delete(delivery));
      }
    },
    async settled() {
      await Promise.all([...pending]);
    },
  };
}
