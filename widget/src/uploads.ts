// Attachments from the guest's side: checked before anything is sent, uploaded straight to
// storage on the URL the edge hands out (with progress and cancel), and download URLs for
// the files shown, fetched with the visitor token and kept until they expire.

import type { Attachment } from "./protocol";

/** What the upload service accepts by default (UPLOAD_ALLOWED_TYPES). */
export const DEFAULT_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"];

export interface FileLike {
  readonly name: string;
  readonly size: number;
  readonly type: string;
}

/** Why a file cannot be sent, in words for the guest; null when it can. */
export function refuseFile(file: FileLike, maxSize: number, types: string[]): string | null {
  if (!types.includes(file.type)) {
    const kinds = types.map((t) => (t.split("/")[1] ?? t).toUpperCase()).join(", ");
    return `${file.name}: this type of file cannot be sent (${kinds} can).`;
  }
  if (file.size <= 0) return `${file.name} is empty.`;
  if (file.size > maxSize)
    return `${file.name} is too large (${formatSize(file.size)}; at most ${formatSize(maxSize)}).`;
  return null;
}

export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export type UploadState = "uploading" | "done" | "failed" | "cancelled";

/** One file on its way to storage: ask for a URL, then PUT it (XHR, for progress). */
export class Upload {
  state: UploadState = "uploading";
  /** 0 to 1. */
  progress = 0;
  error = "";
  attachment: Attachment | null = null;
  private xhr: XMLHttpRequest | null = null;
  private aborted = false;

  constructor(
    readonly file: File,
    private readonly apiUrl: string,
    private readonly token: () => string | undefined,
    private readonly changed: (upload: Upload) => void,
  ) {}

  async start(): Promise<void> {
    this.state = "uploading";
    this.progress = 0;
    this.error = "";
    this.aborted = false;
    this.changed(this);
    try {
      const token = this.token();
      if (!token) throw new Error("Not connected yet. Try again in a moment.");
      const response = await fetch(`${this.apiUrl}/chat/upload-url`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ filename: this.file.name, contentType: this.file.type, size: this.file.size }),
      });
      const answer = (await response.json().catch(() => ({}))) as {
        uploadUrl?: string;
        attachmentId?: string;
        message?: string;
      };
      if (!response.ok || !answer.uploadUrl || !answer.attachmentId)
        throw new Error(answer.message ?? `The upload could not start (${response.status}).`);
      if (this.aborted) return;
      await this.put(answer.uploadUrl);
      this.attachment = {
        id: answer.attachmentId,
        filename: this.file.name,
        contentType: this.file.type,
        size: this.file.size,
      };
      this.state = "done";
    } catch (error) {
      if (this.aborted) return;
      this.state = "failed";
      this.error = error instanceof Error ? error.message : "The upload failed.";
    }
    this.changed(this);
  }

  cancel(): void {
    this.aborted = true;
    this.xhr?.abort();
    this.state = "cancelled";
    this.changed(this);
  }

  private put(url: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open("PUT", url);
      xhr.setRequestHeader("Content-Type", this.file.type);
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) {
          this.progress = event.loaded / event.total;
          this.changed(this);
        }
      };
      xhr.onload = () =>
        xhr.status >= 200 && xhr.status < 300
          ? resolve()
          : reject(new Error(`The upload was refused (${xhr.status}).`));
      xhr.onerror = () => reject(new Error("The connection was lost during the upload."));
      xhr.onabort = () => reject(new Error("Cancelled."));
      xhr.send(this.file);
    });
  }
}

export interface Download {
  attachmentId: string;
  url: string;
  thumbnailUrl?: string | null;
  expiresAt: string;
}

/** Download URLs of the conversation's attachments: asked for in batches, kept until shortly
 * before they expire. */
export class DownloadUrls {
  private readonly known = new Map<string, Download>();
  private waiting = new Map<string, ((d: Download | null) => void)[]>();
  private scheduled = false;

  constructor(
    private readonly apiUrl: string,
    private readonly token: () => string | undefined,
  ) {}

  /** URLs that came with a message: no need to ask for them. */
  remember(download: Download): void {
    this.known.set(download.attachmentId, download);
  }

  get(id: string): Promise<Download | null> {
    const known = this.known.get(id);
    if (known && Date.parse(known.expiresAt) - Date.now() > 60_000) return Promise.resolve(known);
    return new Promise((resolve) => {
      const list = this.waiting.get(id) ?? [];
      list.push(resolve);
      this.waiting.set(id, list);
      if (!this.scheduled) {
        this.scheduled = true;
        setTimeout(() => void this.flush(), 0);
      }
    });
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    const batch = this.waiting;
    this.waiting = new Map();
    const token = this.token();
    let downloads: Download[] = [];
    try {
      if (token) {
        const response = await fetch(`${this.apiUrl}/chat/attachment-urls`, {
          method: "POST",
          headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
          body: JSON.stringify({ attachmentIds: [...batch.keys()].slice(0, 100) }),
        });
        if (response.ok) downloads = ((await response.json()) as { downloads: Download[] }).downloads;
      }
    } catch {
      // Shown without a link; asked again the next time it is drawn.
    }
    for (const download of downloads) this.known.set(download.attachmentId, download);
    for (const [id, resolvers] of batch) for (const resolve of resolvers) resolve(this.known.get(id) ?? null);
  }
}
