// A tiny typed event emitter: a listener that throws cannot break the widget or other listeners.

export class Emitter<Events> {
  private readonly listeners = new Map<keyof Events, Set<(data: never) => void>>();

  on<K extends keyof Events>(event: K, listener: (data: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener as (data: never) => void);
    return () => void set!.delete(listener as (data: never) => void);
  }

  emit<K extends keyof Events>(event: K, data: Events[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as (data: Events[K]) => void)(data);
      } catch (error) {
        console.error("JackChat: an event listener failed", error);
      }
    }
  }
}
