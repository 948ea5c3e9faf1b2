// Type-checks a small client written against the TypeScript types generated from openapi.yaml
// (openapi-typescript → types.ts, next to this file in a temporary directory; see tests/test_sdk.py).
// `tsc --noEmit --strict` must accept it: the generated `paths` describe the operations used here.
import type { components, paths } from "./types";

type JsonBody<P extends keyof paths, M extends keyof paths[P]> =
  paths[P][M] extends { requestBody: { content: { "application/json": infer B } } } ? B : never;
type JsonResponse<P extends keyof paths, M extends keyof paths[P], S extends number> =
  paths[P][M] extends { responses: { [K in S]: { content: { "application/json": infer R } } } } ? R : never;

type Problem = components["schemas"]["Problem"];
type NotReady = components["schemas"]["NotReadyProblem"];

async function post<P extends keyof paths>(base: string, path: P, body: JsonBody<P, "post" & keyof paths[P]>,
                                           key?: string): Promise<Response> {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  return fetch(base + String(path), { method: "POST", headers, body: JSON.stringify(body) });
}

export async function complete(base: string, prompt: string): Promise<string> {
  const request: JsonBody<"/v1/completions", "post"> = { prompt, max_tokens: 16 };
  const response = await post(base, "/v1/completions", request);
  if (response.status === 503) {
    const problem = (await response.json()) as NotReady;
    const reason: "warming_up" | "no_workers" | "init_failed" | "draining" | "worker_lost" | "device_error" =
      problem.reason;
    throw new Error(`not ready (${reason}); retry after ${response.headers.get("Retry-After")} s`);
  }
  if (!response.ok) throw new Error(((await response.json()) as Problem).detail);
  const completion = (await response.json()) as JsonResponse<"/v1/completions", "post", 200>;
  return completion.choices.map((c) => c.text).join("");
}

export async function chat(base: string): Promise<string | null | undefined> {
  const request: JsonBody<"/v1/chat/completions", "post"> = {
    messages: [{ role: "user", content: "Write a haiku about a Tensix core." }],
    max_tokens: 32,
  };
  const response = await post(base, "/v1/chat/completions", request);
  const answer = (await response.json()) as JsonResponse<"/v1/chat/completions", "post", 200>;
  return answer.choices[0]?.message.content as string | null | undefined;
}

export async function health(base: string): Promise<boolean> {
  const response = await fetch(`${base}/health`);
  const _ok: JsonResponse<"/health", "get", 200> | undefined = response.ok ? await response.json() : undefined;
  return response.status === 200 && _ok !== undefined;
}

export async function models(base: string): Promise<string[]> {
  const list = (await (await fetch(`${base}/v1/models`)).json()) as JsonResponse<"/v1/models", "get", 200>;
  return list.data.filter((m) => m.ready).map((m) => `${m.id} (${m.family}, ${m.state})`);
}

// The generated types must reject what the contract rejects.
// @ts-expect-error `prompt` is required by CompletionRequest
const _missingPrompt: JsonBody<"/v1/completions", "post"> = { max_tokens: 16 };
// @ts-expect-error `reason` is a closed enum in NotReadyProblem
const _badReason: NotReady["reason"] = "busy";
// @ts-expect-error no such path in the contract
type _NoSuchPath = paths["/v1/not-a-route"];
