"""Smoke check of kmip_server.py with PyKMIP's own client (KMIP 1.4, mutual TLS 1.2).

    python kmip_client_check.py --port PORT --cert client.crt --key client.key --ca ca.crt

Runs Discover Versions, Query, Create (AES-256 with a Name), Activate, Get
Attributes, Locate by name, Encrypt + Decrypt with AES-GCM (12-byte IV, AAD,
16-byte tag; checked against a local AES-GCM with the key fetched by Get, and a
forged tag must fail), Revoke, Destroy. Prints each step and the raw TTLV of the
GCM Encrypt request and response (hex, then decoded). Exits 0 only if all pass.

The request shapes PyKMIP 0.10.0's server accepts for AES-GCM (a Rust TTLV client
must produce the same; the server reads fields strictly in this order, rejects
unknown ones, and reads AAD/tag only when the request header says KMIP >= 1.4):

  Request Header: Protocol Version 1.4, Batch Count 1
  Batch Item: Operation Encrypt (0x1F) / Decrypt (0x20), then Request Payload:
    Encrypt: Unique Identifier (text)
             Cryptographic Parameters (structure, fields in this order):
               Block Cipher Mode = GCM (enum 9)
               Cryptographic Algorithm = AES (enum 3)   <- required: the server
                   does not take it from the key, and fails without it
               Tag Length = 16 (integer, BYTES; required for GCM)
             Data (bytes: the plaintext)
             IV/Counter/Nonce (bytes: give 12; if omitted the server makes a
                   16-byte one and returns it)
             Authenticated Encryption Additional Data (bytes, KMIP 1.4, optional)
    Decrypt: Unique Identifier, Cryptographic Parameters (as above),
             Data (ciphertext only), IV/Counter/Nonce,
             Authenticated Encryption Additional Data,
             Authenticated Encryption Tag (bytes, KMIP 1.4)
  Encrypt response payload: Unique Identifier, Data (ciphertext only, same length
    as the plaintext), [IV/Counter/Nonce only if the server generated it],
    Authenticated Encryption Tag (separate field, not appended to Data).
  Decrypt response payload: Unique Identifier, Data (plaintext). A wrong tag or AAD
    gives Result Status Operation Failed (1), Result Reason General Failure (0x100),
    message "Operation failed. See the server logs for more information.".
  (Cryptographic Parameters has no IV/AAD/tag fields: those are payload fields.
  The Proxy client's encrypt()/decrypt() can't send AAD or return the tag, so
  this script builds those two payloads itself.)
"""
import argparse
import os
import struct
import sys
import uuid
import warnings

warnings.simplefilter("ignore")  # cryptography deprecation warnings via PyKMIP

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from kmip.core import enums  # noqa: E402
from kmip.core.attributes import CryptographicParameters  # noqa: E402
from kmip.core.factories import attributes as attribute_factory  # noqa: E402
from kmip.core.messages import messages, payloads  # noqa: E402
from kmip.core.messages.contents import Operation  # noqa: E402
from kmip.pie.client import ProxyKmipClient  # noqa: E402
from kmip.services import kmip_protocol  # noqa: E402

# --- raw TTLV capture: every message the client writes or reads -------------
captured = []  # (direction, bytes)
_write, _read = kmip_protocol.KMIPProtocol.write, kmip_protocol.KMIPProtocol.read


def _capture_write(self, data):
    captured.append(("request", bytes(data)))
    return _write(self, data)


def _capture_read(self):
    stream = _read(self)
    captured.append(("response", bytes(stream.buffer)))  # peek; read() consumes later
    return stream


kmip_protocol.KMIPProtocol.write = _capture_write
kmip_protocol.KMIPProtocol.read = _capture_read

TYPES = {1: "Structure", 2: "Integer", 3: "LongInteger", 4: "BigInteger", 5: "Enumeration",
         6: "Boolean", 7: "TextString", 8: "ByteString", 9: "DateTime", 10: "Interval"}


def ttlv_lines(data, depth=0):
    """Decodes TTLV: 3-byte tag, 1-byte type, 4-byte length, value padded to 8."""
    out, i = [], 0
    while i < len(data):
        tag = int.from_bytes(data[i:i + 3], "big")
        typ, length = data[i + 3], struct.unpack(">I", data[i + 4:i + 8])[0]
        value = data[i + 8:i + 8 + length]
        try:
            name = enums.Tags(tag).name
        except ValueError:
            name = "?"
        head = f"{'  ' * depth}{tag:06X} {name} {TYPES.get(typ, typ)}({length})"
        if typ == 1:
            out.append(head)
            out += ttlv_lines(value, depth + 1)
        elif typ == 7:
            out.append(f"{head} {value.decode()!r}")
        elif typ in (2, 5, 10):
            out.append(f"{head} {int.from_bytes(value, 'big', signed=typ == 2)}")
        else:
            out.append(f"{head} {value.hex()}")
        i += 8 + (length + 7) // 8 * 8
    return out


def dump(label, data):
    print(f"  {label} TTLV ({len(data)} bytes): {data.hex()}")
    for line in ttlv_lines(data):
        print(f"    {line}")


# --- GCM Encrypt/Decrypt through the client's message layer -----------------
def gcm_params():
    return CryptographicParameters(
        block_cipher_mode=enums.BlockCipherMode.GCM,
        cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
        tag_length=16,
    )


def send(client, operation, payload):
    proxy = client.proxy
    item = messages.RequestBatchItem(operation=Operation(operation), request_payload=payload)
    response = proxy._send_and_receive_message(proxy._build_request_message(None, [item]))
    item = response.batch_items[0]
    if item.result_status.value != enums.ResultStatus.SUCCESS:
        raise RuntimeError(f"{operation.name}: {item.result_reason.value.name}: "
                           f"{item.result_message.value}")
    return item.response_payload


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    a = p.parse_args()

    client = ProxyKmipClient(
        hostname="127.0.0.1", port=a.port, cert=a.cert, key=a.key, ca=a.ca,
        ssl_version="PROTOCOL_TLSv1_2", kmip_version=enums.KMIPVersion.KMIP_1_4,
        config_file=os.devnull,  # ignore any /etc/pykmip/pykmip.conf
    )
    with client:
        versions = client.proxy.discover_versions().protocol_versions
        print("Discover Versions:", ", ".join(str(v) for v in versions))
        q = client.proxy.query(query_functions=[
            enums.QueryFunction.QUERY_OPERATIONS, enums.QueryFunction.QUERY_OBJECTS,
            enums.QueryFunction.QUERY_SERVER_INFORMATION])
        print("Query: operations:", ", ".join(o.name for o in q.operations or []))
        print("Query: objects:", ", ".join(o.name for o in q.object_types or []))
        print("Query: vendor:", q.vendor_identification, "server info:", q.server_information)

        name = f"sealdb-smoke-{uuid.uuid4().hex[:8]}"
        uid = client.create(
            enums.CryptographicAlgorithm.AES, 256, name=name,
            cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT,
                                      enums.CryptographicUsageMask.DECRYPT])
        print(f"Create: AES-256 key {uid} named {name}")

        client.activate(uid)
        print("Activate: ok")

        _, attrs = client.get_attributes(uid, ["State", "Name", "Cryptographic Length"])
        shown = {x.attribute_name.value: x.attribute_value for x in attrs}
        state = shown["State"].value
        print(f"Get Attributes: State={state.name} Name={shown['Name'].name_value.value} "
              f"Cryptographic Length={shown['Cryptographic Length'].value}")
        assert state == enums.State.ACTIVE, state

        name_attr = attribute_factory.AttributeFactory().create_attribute(
            enums.AttributeType.NAME, name)
        found = client.locate(attributes=[name_attr])
        print(f"Locate by name: {found}")
        assert found == [uid], found

        plaintext, aad, iv = b"sealdb data key wrapping smoke test", b"sealdb-aad", os.urandom(12)
        before = len(captured)
        enc = send(client, enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
            unique_identifier=uid, cryptographic_parameters=gcm_params(), data=plaintext,
            iv_counter_nonce=iv, auth_additional_data=aad))
        print(f"Encrypt (GCM): ciphertext={enc.data.hex()} tag={enc.auth_tag.hex()} "
              f"returned iv={enc.iv_counter_nonce}")
        for direction, data in captured[before:]:
            dump(f"Encrypt {direction}", data)
        assert len(enc.data) == len(plaintext) and len(enc.auth_tag) == 16

        key = client.get(uid).value
        assert AESGCM(key).encrypt(iv, plaintext, aad) == enc.data + enc.auth_tag
        print("Encrypt (GCM): matches local AES-GCM with the key from Get")

        dec = send(client, enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
            unique_identifier=uid, cryptographic_parameters=gcm_params(), data=enc.data,
            iv_counter_nonce=iv, auth_additional_data=aad, auth_tag=enc.auth_tag))
        print(f"Decrypt (GCM): {dec.data!r}")
        assert dec.data == plaintext

        forged = bytes([enc.auth_tag[0] ^ 1]) + enc.auth_tag[1:]
        try:
            send(client, enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
                unique_identifier=uid, cryptographic_parameters=gcm_params(), data=enc.data,
                iv_counter_nonce=iv, auth_additional_data=aad, auth_tag=forged))
            raise AssertionError("Decrypt with a forged tag succeeded")
        except RuntimeError as e:
            print(f"Decrypt (GCM, forged tag): refused: {e}")

        client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        _, attrs = client.get_attributes(uid, ["State"])
        print(f"Revoke: ok, State={attrs[0].attribute_value.value.name}")

        client.destroy(uid)
        print(f"Destroy: ok, Locate by name now finds {client.locate(attributes=[name_attr])}")
    print("KMIP client check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
