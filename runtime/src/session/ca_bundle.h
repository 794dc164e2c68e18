// tls_options::ca_path for Paho. Paho C++ 1.2 loses the CA directory when it copies its SSL options (the
// copy keeps a pointer to the original's string), so the runtime hands Paho one file instead: every
// certificate of the directory (and of ca_file), concatenated into a private temporary file that lives
// as long as the client.
#pragma once

#include <string>

namespace xymqtt::detail {

class ca_bundle {
public:
    /// Collects the PEM certificates of the regular files in `dir` (symbolic links such as the hash
    /// names of `openssl rehash` are read once, through their target) and of `ca_file` (may be empty).
    /// @throw xymqtt::configuration_error if `dir` cannot be read or holds no certificate, or the
    ///        temporary file cannot be written.
    ca_bundle(const std::string& dir, const std::string& ca_file);
    ~ca_bundle();
    ca_bundle(const ca_bundle&) = delete;
    ca_bundle& operator=(const ca_bundle&) = delete;

    /// @return the file to give Paho as its trust store.
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

}  // namespace xymqtt::detail
