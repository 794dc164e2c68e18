// Serving `delete` (rpc Delete, escaped as delete_) with a handler that takes another command's request.
#include "examples/library.xymqtt.h"

using namespace xymqtt::examples::library;

class Shelf final : public Books::Service {
public:
    Book get(const GetBookRequest&, xymqtt::call_context&) override { return {}; }
    ListBooksResponse list(const ListBooksRequest&, xymqtt::call_context&) override { return {}; }
    Book create(const CreateBookRequest&, xymqtt::call_context&) override { return {}; }
    Book update(const UpdateBookRequest&, xymqtt::call_context&) override { return {}; }
#ifdef XYMQTT_NEGATIVE
    google::protobuf::Empty delete_(const GetBookRequest&, xymqtt::call_context&) override { return {}; }
#else
    google::protobuf::Empty delete_(const DeleteBookRequest&, xymqtt::call_context&) override { return {}; }
#endif
};
