/// @file tls_options.h
/// TLS settings of a client's connection to the broker.
///
/// A client uses TLS when its server URIs have the scheme `ssl://` or `mqtts://` (with the defaults of
/// tls_options when `client_options::tls` is unset). `client_options::tls` with a `tcp://` or `mqtt://`
/// URI is a configuration_error: the connection would be plain text. The settings are passed to Paho. Unlike Paho, which leaves host
/// name verification off, xymqtt verifies both the server certificate and the host name by default.
#pragma once

#include <string>

namespace xymqtt {

/// TLS settings, passed through to Paho. Host name verification is ON by default (Paho's is off).
struct tls_options {
    std::string ca_file;           ///< PEM file of trusted CAs; empty = the system's.
    /// Directory of trusted CAs (PEM files, such as the hash names `openssl rehash` makes); with ca_file,
    /// both are trusted; both empty = the system's. Read once, when the client is constructed.
    std::string ca_path;
    std::string cert_file;         ///< Client certificate (PEM), for mutual TLS.
    std::string key_file;          ///< Client private key (PEM).
    std::string key_password;      ///< Password of `key_file`, if it is encrypted; empty = none.
    bool verify_host = true;       ///< Check that the server certificate names the host.
    bool verify_server = true;     ///< Check the server certificate against the CAs.
};

}  // namespace xymqtt
