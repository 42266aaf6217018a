// The browser-console snippet exactly as README.md shows it: the first ```js block that
// connects to http://localhost:8080/chat.
import { readFileSync } from "node:fs";

export function readmeSnippet() {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  for (const [, block] of readme.matchAll(/```js\n([\s\S]*?)```/g)) {
    if (block.includes("io('http://localhost:8080/chat')")) return block;
  }
  throw new Error("README.md has no console snippet");
}
