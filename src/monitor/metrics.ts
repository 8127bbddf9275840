/**
 * Metrics in the Prometheus text exposition format (version 0.0.4), served on the admin
 * listener. Counters are kept here; gauges and queue figures are read from their owners when
 * scraped, so nothing is sampled on the request path.
 */

type Labels = Readonly<Record<string, string>>;

interface Family {
  help: string;
  type: 'counter' | 'gauge';
  values: Map<string, { labels: Labels; value: number }>;
}

/** A label value escaped for the exposition format (most need nothing: counted on the request path). */
function escapeLabel(value: string): string {
  return /[\\"\n]/.test(value) ? value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') : value;
}

function labelText(labels: Labels): string {
  let text = '';
  for (const name in labels) text += `${text ? ',' : ''}${name}="${escapeLabel(labels[name] as string)}"`;
  return text ? `{${text}}` : '';
}

export class Metrics {
  readonly #families = new Map<string, Family>();
  readonly #collectors: (() => void)[] = [];

  #family(name: string, help: string, type: Family['type']): Family {
    let family = this.#families.get(name);
    if (!family) {
      family = { help, type, values: new Map() };
      this.#families.set(name, family);
    }
    return family;
  }

  inc(name: string, help: string, labels: Labels = {}, by = 1): void {
    const family = this.#family(name, help, 'counter');
    const key = labelText(labels);
    const entry = family.values.get(key);
    if (entry) entry.value += by;
    else family.values.set(key, { labels, value: by });
  }

  set(name: string, help: string, labels: Labels, value: number, type: Family['type'] = 'gauge'): void {
    this.#family(name, help, type).values.set(labelText(labels), { labels, value });
  }

  /** Registers a function that sets figures owned elsewhere, run at every scrape. */
  collect(collector: () => void): void {
    this.#collectors.push(collector);
  }

  render(): string {
    for (const collector of this.#collectors) collector();
    const lines: string[] = [];
    for (const [name, family] of [...this.#families].sort(([a], [b]) => a.localeCompare(b))) {
      lines.push(`# HELP ${name} ${family.help}`, `# TYPE ${name} ${family.type}`);
      for (const { labels, value } of family.values.values()) lines.push(`${name}${labelText(labels)} ${Number.isFinite(value) ? value : 0}`);
    }
    return `${lines.join('\n')}\n`;
  }
}
