"""An asyncio app that calls a (local, GitHub-like) API with urllib and
reports each response's rate-limit headers through the loopwatch client."""

import asyncio
import os
import urllib.error
import urllib.request

import loopwatch

API = os.environ["API_URL"]


def call(token: str):
    request = urllib.request.Request(API + "/repos/acme/app", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as refusal:
        return refusal.code, refusal.headers, refusal.read()


async def main() -> None:
    async with loopwatch.watch("ratelimit-app") as reporter:
        loop = asyncio.get_running_loop()
        for secret, token_name in (("app-ok", "ci-bot"), ("app-secondary", "ci-bot"), ("app-spent", "deploy")):
            status, headers, body = await loop.run_in_executor(None, call, secret)
            reporter.report_headers("github", headers, status=status, body=body, token=token_name)
            print(f"{secret} {status}", flush=True)
        await asyncio.sleep(0.5)


asyncio.run(main())
