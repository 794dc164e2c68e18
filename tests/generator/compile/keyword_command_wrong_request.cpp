// Calling a command whose name is a C++ keyword (rpc Delete, escaped as call_delete / delete_) with
// another command's request type.
#include "examples/library.xymqtt.h"

using namespace xymqtt::examples::library;

void remove(Books::ClientInterface& books) {
#ifdef XYMQTT_NEGATIVE
    books.call_delete_async(GetBookRequest{});
#else
    books.call_delete_async(DeleteBookRequest{});
#endif
}
