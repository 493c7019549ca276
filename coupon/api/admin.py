"""Operator API: households, tranches, merchants, terminals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from coupon import errors, households, merchants, national_id, tranches
from coupon.api import keys
from coupon.api.common import int_param, json_response
from coupon.api.guard import body_of, national_only, query_of, scope_of
from coupon.models import (
    ImportQuery,
    ImportResponse,
    MerchantCreate,
    SecretRotation,
    StatusChange,
    TerminalChange,
    TrancheCreate,
    TrancheList,
)

# a national import file: 21 M rows of ~30 bytes
MAX_IMPORT_BYTES = 2 * 1024**3


async def import_households(request: web.Request) -> web.StreamResponse:
    if request.content_type not in ("text/csv", "text/plain", "application/csv"):
        raise errors.UnsupportedMediaType("send the households as text/csv")
    if (request.content_length or 0) > MAX_IMPORT_BYTES:
        raise errors.PayloadTooLarge(f"at most {MAX_IMPORT_BYTES} bytes per import")

    pause = request.app[keys.SETTINGS].body_timeout

    async def body() -> AsyncIterator[bytes]:
        received = 0
        while True:
            try:
                # a long upload is fine; one that stops sending is not
                async with asyncio.timeout(pause):
                    block = await request.content.read(1 << 20)
            except TimeoutError:
                raise errors.RequestTimeout() from None
            if not block:
                return
            received += len(block)
            if received > MAX_IMPORT_BYTES:
                raise errors.PayloadTooLarge(f"at most {MAX_IMPORT_BYTES} bytes per import")
            yield block

    streamed: web.StreamResponse | None = None

    async def every_rejection(chunk: bytes) -> None:
        # the answer starts with the first rejections: its counts follow the last one
        nonlocal streamed
        if streamed is None:
            streamed = web.StreamResponse(headers={"Content-Type": "application/json"})
            streamed.enable_chunked_encoding()
            await streamed.prepare(request)
            await streamed.write(b'{"rejected":[')
        await streamed.write(chunk)

    everything = query_of(request, ImportQuery).rejections == "all"
    async with request.app[keys.POOL].acquire() as conn:
        result = await households.import_csv(
            conn, body(), every_rejection if everything else None, scope_of(request)
        )
    request[keys.LOG].update(
        imported=result.imported, updated=result.updated, rejected=result.rejected_count
    )
    if streamed is None:
        return json_response(ImportResponse.model_validate(result.as_response()))
    # committed: the rest of the answer (a body cut short means the import did not happen)
    await streamed.write(b"]," + orjson.dumps(result.as_response(with_rejected=False))[1:])
    await streamed.write_eof()
    return streamed


async def patch_household(request: web.Request) -> web.Response:
    nid = request.match_info["national_id"]
    if not national_id.is_valid(nid):
        raise errors.InvalidNationalId()
    change = body_of(request, StatusChange)
    async with request.app[keys.POOL].acquire() as conn:
        row = await households.set_status(conn, nid, change.status, scope_of(request))
    return json_response(row)


async def create_tranche(request: web.Request) -> web.Response:
    national_only(request)  # programme phases are national (the query refuses them too)
    tranche = body_of(request, TrancheCreate)
    async with request.app[keys.POOL].acquire() as conn:
        created = await tranches.open_tranche(conn, tranche, scope_of(request))
    request[keys.LOG].update(tranche_id=created.id, households_credited=created.households_credited)
    return json_response(created, status=201)


async def list_tranches(request: web.Request) -> web.Response:
    async with request.app[keys.POOL].acquire() as conn:
        rows = await tranches.list_tranches(conn)
    return json_response(TrancheList.model_validate({"tranches": rows}))


async def create_merchant(request: web.Request) -> web.Response:
    merchant = body_of(request, MerchantCreate)
    async with request.app[keys.POOL].acquire() as conn:
        merchant_id = await merchants.create_merchant(conn, merchant, scope_of(request))
    return json_response({"id": merchant_id}, status=201)


async def patch_merchant(request: web.Request) -> web.Response:
    merchant_id = int_param(request, "id")
    change = body_of(request, StatusChange)
    async with request.app[keys.POOL].acquire() as conn:
        merchant = await merchants.set_merchant_status(
            conn, merchant_id, change.status, scope_of(request)
        )
    return json_response(merchant)


async def create_terminal(request: web.Request) -> web.Response:
    merchant_id = int_param(request, "id")
    async with request.app[keys.POOL].acquire() as conn:
        created = await merchants.create_terminal(
            conn, merchant_id, request.app[keys.KEYRING], scope_of(request)
        )
    request.app[keys.SECRETS].forget()  # known here at once (elsewhere within a second)
    request[keys.LOG]["terminal_id"] = created.terminal_id  # the secret is never logged
    return json_response(created, status=201)


async def patch_terminal(request: web.Request) -> web.Response:
    terminal_id = int_param(request, "id")
    change = body_of(request, TerminalChange)
    async with request.app[keys.POOL].acquire() as conn:
        terminal = await merchants.set_terminal_status(
            conn, terminal_id, change.status, change.offline_enabled, scope_of(request)
        )
    return json_response(terminal)


async def rotate_terminal_secret(request: web.Request) -> web.Response:
    terminal_id = int_param(request, "id")
    overlap = body_of(request, SecretRotation).overlap_seconds
    async with request.app[keys.POOL].acquire() as conn:
        rotated = await merchants.rotate_secret(
            conn, terminal_id, request.app[keys.KEYRING], overlap, scope_of(request)
        )
    request.app[keys.SECRETS].forget()
    request[keys.LOG]["terminal_id"] = terminal_id  # the secret is never logged
    return json_response(rotated, status=201)
