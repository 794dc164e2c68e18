// An in-memory implementation of the AIP-style example contract (schemas/examples/library.proto), served
// by the loopback and the broker tests of the generated code.
#pragma once

#include <google/protobuf/util/field_mask_util.h>

#include <map>
#include <mutex>
#include <string>

#include "examples/library.xymqtt.h"

namespace library_test {

namespace lib = xymqtt::examples::library;

class library_service final : public lib::Books::Service {
public:
    lib::Book get(const lib::GetBookRequest& request, xymqtt::call_context&) override {
        std::lock_guard<std::mutex> lk(mu_);
        return find<lib::Books::GetError>(request.name());
    }
    lib::ListBooksResponse list(const lib::ListBooksRequest& request, xymqtt::call_context&) override {
        std::lock_guard<std::mutex> lk(mu_);
        const std::string prefix = request.parent() + "/books/";
        lib::ListBooksResponse page;
        const int size = request.page_size() > 0 ? request.page_size() : 50;
        for (auto it = books_.upper_bound(request.page_token()); it != books_.end(); ++it) {
            if (it->first.rfind(prefix, 0) != 0) continue;
            if (page.books_size() == size) {
                page.set_next_page_token(page.books(size - 1).name());
                break;
            }
            *page.add_books() = it->second;
        }
        return page;
    }
    lib::Book create(const lib::CreateBookRequest& request, xymqtt::call_context&) override {
        using E = lib::Books::CreateError;
        if (request.book_id().empty()) refuse<E>(400, lib::BookRefused::INVALID_ARGUMENT, "book_id");
        std::lock_guard<std::mutex> lk(mu_);
        const std::string name = request.parent() + "/books/" + request.book_id();
        if (books_.count(name)) refuse<E>(409, lib::BookRefused::ALREADY_EXISTS, "book_id");
        lib::Book book = request.book();
        book.set_name(name);
        book.mutable_create_time()->set_seconds(++clock_);
        *book.mutable_update_time() = book.create_time();
        return books_[name] = book;
    }
    lib::Book update(const lib::UpdateBookRequest& request, xymqtt::call_context&) override {
        std::lock_guard<std::mutex> lk(mu_);
        lib::Book& book = find<lib::Books::UpdateError>(request.book().name());
        if (request.update_mask().paths_size() == 0)
            book.MergeFrom(request.book());
        else
            google::protobuf::util::FieldMaskUtil::MergeMessageTo(request.book(), request.update_mask(), {}, &book);
        book.mutable_update_time()->set_seconds(++clock_);
        return book;
    }
    google::protobuf::Empty delete_(const lib::DeleteBookRequest& request, xymqtt::call_context&) override {
        std::lock_guard<std::mutex> lk(mu_);
        find<lib::Books::DeleteError>(request.name());
        books_.erase(request.name());
        return {};
    }

private:
    // Each command rejects with its own error type: the generated server encodes the details of that one.
    template <class Error>
    lib::Book& find(const std::string& name) {
        auto it = books_.find(name);
        if (it == books_.end()) refuse<Error>(404, lib::BookRefused::NOT_FOUND, "name");
        return it->second;
    }
    template <class Error>
    [[noreturn]] static void refuse(int status, lib::BookRefused::Reason reason, const std::string& field) {
        lib::BookRefused details;
        details.set_reason(reason);
        details.set_field(field);
        throw Error(status, lib::BookRefused::Reason_Name(reason), details);
    }

    std::mutex mu_;
    std::map<std::string, lib::Book> books_;
    std::int64_t clock_ = 1700000000;
};

}  // namespace library_test
