"""`grpc_api.reflection`: the gRPC API listener describes itself, so tools like grpcurl work
without the .proto. Read with grpcio-reflection's client (the v1alpha service; v1 is served
too): the service list, and the API's file resolved from a method name, with the method's
request type. Without the key, reflection is not served."""

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import grpc_wire_helpers as gw
import interop_helpers as h

API_SERVICE = "centrifugal.centrifugo.api.CentrifugoApi"


def _with_reflection(enabled):
    def factory(port, grpc_port, secret, api_key, grpc_key):
        config = h.python_suite_config(port, grpc_port, secret, api_key, grpc_key)
        config["grpc_api"]["reflection"] = enabled
        return config

    return factory


def test_reflection_describes_the_server_api():
    with gw.running_server(_with_reflection(True)) as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = database.get_services()
            assert API_SERVICE in services, services
            pool = DescriptorPool(database)
            service = pool.FindServiceByName(API_SERVICE)
            publish = service.FindMethodByName("Publish")
            assert publish.input_type.full_name == "centrifugal.centrifugo.api.PublishRequest"
            fields = {field.name: field.number for field in publish.input_type.fields}
            assert fields["channel"] == 1 and fields["data"] == 2, fields
            assert service.FindMethodByName("MapPublish") is not None


def test_reflection_is_off_by_default():
    with gw.running_server(_with_reflection(False)) as server:
        with grpc.insecure_channel(server.grpc_target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            try:
                services = database.get_services()
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error
            else:
                raise AssertionError(f"reflection answered without grpc_api.reflection: {services}")
