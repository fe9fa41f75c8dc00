"""Interoperability check: the official P4Runtime Python bindings (PyPI `p4runtime`, generated
from p4lang/p4runtime's protos) drive the NexRoute software target.

Usage: python3 p4runtime_client.py HOST:PORT P4INFO_TXTPB
Exits 0 when every step behaves as the P4Runtime specification says.
"""

import sys

import grpc
from google.protobuf import text_format
from google.rpc import status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc


def main() -> int:
    addr, p4info_path = sys.argv[1], sys.argv[2]
    info = text_format.Parse(open(p4info_path).read(), p4info_pb2.P4Info())
    ids = {t.preamble.alias: t.preamble.id for t in info.tables}
    ids.update({a.preamble.alias: a.preamble.id for a in info.actions})
    channel = grpc.insecure_channel(addr)
    stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)

    caps = stub.Capabilities(p4runtime_pb2.CapabilitiesRequest())
    assert caps.p4runtime_api_version.startswith("1."), caps

    # Arbitration on the stream channel: alone, we are primary (status OK).
    requests = []
    def stream():
        req = p4runtime_pb2.StreamMessageRequest()
        req.arbitration.device_id = 1
        req.arbitration.election_id.low = 7
        yield req
        import time
        while True:
            time.sleep(1)
            if requests:
                return
    responses = stub.StreamChannel(stream())
    first = next(responses)
    assert first.arbitration.status.code == 0, first
    assert first.arbitration.election_id.low == 7, first

    # Load the pipeline.
    req = p4runtime_pb2.SetForwardingPipelineConfigRequest(device_id=1)
    req.election_id.low = 7
    req.action = p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT
    req.config.p4info.CopyFrom(info)
    req.config.cookie.cookie = 1234
    stub.SetForwardingPipelineConfig(req)
    got = stub.GetForwardingPipelineConfig(p4runtime_pb2.GetForwardingPipelineConfigRequest(device_id=1))
    assert got.config.cookie.cookie == 1234 and got.config.p4info == info

    # A good entry and a bad one (value wider than the 32-bit field) in one batch.
    def tenant_entry(value):
        u = p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT)
        te = u.entity.table_entry
        te.table_id = ids["tenant"]
        m = te.match.add()
        m.field_id = 1
        m.exact.value = value
        te.action.action.action_id = ids["set_tenant"]
        p = te.action.action.params.add()
        p.param_id = 1
        p.value = b"\x01"
        return u
    w = p4runtime_pb2.WriteRequest(device_id=1)
    w.election_id.low = 7
    w.updates.extend([tenant_entry(b"\x07\x00\x00\x00"), tenant_entry(b"\x01\x02\x03\x04\x05")])
    try:
        stub.Write(w)
        raise AssertionError("the bad update was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNKNOWN, e.code()
        details = dict(e.trailing_metadata()).get("grpc-status-details-bin")
        st = status_pb2.Status.FromString(details)
        errs = []
        for any_ in st.details:
            err = p4runtime_pb2.Error()
            assert any_.Unpack(err), any_.type_url
            errs.append(err.canonical_code)
        assert errs == [0, 11], errs  # OK, OUT_OF_RANGE

    # Read back: the good entry, canonical bytes.
    r = p4runtime_pb2.ReadRequest(device_id=1)
    r.entities.add().table_entry.table_id = 0
    entries = [e for resp in stub.Read(r) for e in resp.entities]
    assert len(entries) == 1, entries
    te = entries[0].table_entry
    assert te.match[0].exact.value == b"\x07\x00\x00\x00", te  # already canonical
    assert te.action.action.params[0].value == b"\x01", te

    requests.append(True)
    print("p4runtime interop: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
