# Debian packages of the install components, made by CPack (scripts/package):
#   libxymqtt<major>.<minor>  the shared libraries
#   libxymqtt-dev             headers, CMake package, pkg-config files (needs the generator: xymqtt_generate)
#   protoc-gen-xymqtt         the protoc plugin and xymqtt/options.proto
#   xymqtt-cli                the command-line tool
# The shared libraries' own dependencies are found by dpkg-shlibdeps (Debian's dpkg-dev); the rest are
# named here.
set(CPACK_GENERATOR "DEB")
set(CPACK_PACKAGE_NAME "xymqtt")
set(CPACK_PACKAGE_VENDOR "xymqtt")
set(CPACK_PACKAGE_CONTACT "xymqtt maintainers <xymqtt@localhost>")
set(CPACK_PACKAGE_VERSION "${PROJECT_VERSION}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Typed events and commands over MQTT with guaranteed delivery")
set(CPACK_RESOURCE_FILE_LICENSE "${PROJECT_SOURCE_DIR}/LICENSE")
set(CPACK_PACKAGING_INSTALL_PREFIX "/usr")
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL runtime dev generator cli)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION "libs")
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/xymqtt/xymqtt")
find_program(XYMQTT_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(XYMQTT_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
  # The tool needs xymqtt's own libraries, which no installed package provides yet: dpkg-shlibdeps finds
  # them in the build tree, and the tool's package names the runtime's (below).
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS "${PROJECT_BINARY_DIR}/runtime" "${PROJECT_BINARY_DIR}/generated")
endif()
# The runtime package declares its libraries (a shlibs file), so that packages built on it depend on it.
set(CPACK_DEBIAN_RUNTIME_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")

set(_exact "(= ${PROJECT_VERSION})")
foreach(component runtime dev generator cli)
  string(TOUPPER ${component} C)
  set(CPACK_DEBIAN_${C}_PACKAGE_NAME "${XYMQTT_PACKAGE_${component}}")
endforeach()
set(CPACK_COMPONENT_RUNTIME_DESCRIPTION
    "xymqtt runtime: durable MQTT events and commands (client, LMDB and SQLite stores)")
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "xymqtt development files: headers, CMake package with xymqtt_generate(), pkg-config files")
set(CPACK_COMPONENT_GENERATOR_DESCRIPTION
    "protoc-gen-xymqtt: generates typed xymqtt clients, servers and mocks from .proto contracts")
set(CPACK_COMPONENT_CLI_DESCRIPTION
    "xymqtt command-line tool: call, publish, subscribe, serve and inspect stores from .proto contracts")
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION "libdevel")
set(CPACK_DEBIAN_GENERATOR_PACKAGE_SECTION "devel")
set(CPACK_DEBIAN_CLI_PACKAGE_SECTION "net")
set(CPACK_DEBIAN_GENERATOR_PACKAGE_ARCHITECTURE "all")
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS
    "${XYMQTT_PACKAGE_runtime} ${_exact}, ${XYMQTT_PACKAGE_generator} ${_exact}, libprotobuf-dev, protobuf-compiler, pkg-config")
set(CPACK_DEBIAN_DEV_PACKAGE_SUGGESTS "libtrompeloeil-cpp-dev")
set(CPACK_DEBIAN_GENERATOR_PACKAGE_DEPENDS "python3, python3-protobuf, python3-jinja2, protobuf-compiler")
set(CPACK_DEBIAN_CLI_PACKAGE_DEPENDS "${XYMQTT_PACKAGE_runtime} ${_exact}")

include(CPack)
