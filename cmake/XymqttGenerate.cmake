# xymqtt_generate(): typed xymqtt clients, servers and mocks from .proto files.
#
#   xymqtt_generate(TARGET <target> PROTOS <file.proto>... [IMPORT_DIRS <dir>...] [OUT_DIR <dir>] [MOCKS])
#
# Runs protoc (C++ output) and protoc-gen-xymqtt on each PROTOS file and builds the results into the
# library <target>, linked to xymqtt::protobuf (the runtime and its protobuf codec); if <target> exists
# already (an executable, say), the generated sources are added to it instead, as protobuf_generate does. Each `dir/x.proto` (named relative to the first
# IMPORT_DIRS entry that contains it; default: the current source directory) gives `dir/x.pb.h`,
# `dir/x.xymqtt.h` (include them as such) and, with MOCKS, `dir/x.xymqtt_mock.h` in the INTERFACE
# library <lib>_mocks (linked to xymqtt::testing and trompeloeil). The directory of
# `xymqtt/options.proto` is added to the import path; its C++ code is the library
# xymqtt::options_proto (installed with the package; built once per project otherwise). Outputs are regenerated when a schema, the generator or a template changes.
#
# The generator needs a Python 3 that has google.protobuf and jinja2; it is looked for at configure
# time (XYMQTT_PYTHON_EXECUTABLE, the XYMQTT_PYTHON environment variable, python3 on PATH,
# /usr/bin/python3).
include_guard(GLOBAL)

# Where the generator and options.proto are: xymqttConfig.cmake sets these when installed;
# in the source tree they are next to this file's directory.
if(NOT XYMQTT_GENERATOR_DIR)
  get_filename_component(XYMQTT_GENERATOR_DIR "${CMAKE_CURRENT_LIST_DIR}/../generator" ABSOLUTE)
endif()
if(NOT XYMQTT_PROTO_DIR)
  get_filename_component(XYMQTT_PROTO_DIR "${CMAKE_CURRENT_LIST_DIR}/../schemas" ABSOLUTE)
endif()
if(NOT EXISTS "${XYMQTT_GENERATOR_DIR}/protoc-gen-xymqtt")
  message(FATAL_ERROR "xymqtt: protoc-gen-xymqtt not found in ${XYMQTT_GENERATOR_DIR}")
endif()
if(NOT EXISTS "${XYMQTT_PROTO_DIR}/xymqtt/options.proto")
  message(FATAL_ERROR "xymqtt: xymqtt/options.proto not found in ${XYMQTT_PROTO_DIR}")
endif()

if(NOT TARGET protobuf::protoc OR NOT TARGET protobuf::libprotobuf)
  find_package(Protobuf REQUIRED)
endif()

file(GLOB XYMQTT_GENERATOR_DEPENDS
  "${XYMQTT_GENERATOR_DIR}/protoc-gen-xymqtt"
  "${XYMQTT_GENERATOR_DIR}/xymqtt_gen/*.py"
  "${XYMQTT_GENERATOR_DIR}/xymqtt_gen/*.json"
  "${XYMQTT_GENERATOR_DIR}/templates/*.j2")

# Finds a Python 3 that imports google.protobuf and jinja2 (the python3 on PATH may lack them).
function(_xymqtt_find_python)
  if(XYMQTT_PYTHON_EXECUTABLE)
    execute_process(COMMAND "${XYMQTT_PYTHON_EXECUTABLE}" -c "import google.protobuf, jinja2"
                    RESULT_VARIABLE rv OUTPUT_QUIET ERROR_QUIET)
    if(rv EQUAL 0)
      return()
    endif()
    message(FATAL_ERROR "xymqtt: XYMQTT_PYTHON_EXECUTABLE=${XYMQTT_PYTHON_EXECUTABLE} cannot import "
                        "google.protobuf and jinja2 (needed by protoc-gen-xymqtt).")
  endif()
  set(candidates)
  if(DEFINED ENV{XYMQTT_PYTHON})
    list(APPEND candidates "$ENV{XYMQTT_PYTHON}")
  endif()
  find_program(_xymqtt_path_python NAMES python3 NO_CACHE)
  if(_xymqtt_path_python)
    list(APPEND candidates "${_xymqtt_path_python}")
  endif()
  list(APPEND candidates /usr/bin/python3 /usr/local/bin/python3)
  set(tried)
  foreach(candidate IN LISTS candidates)
    if(NOT EXISTS "${candidate}")
      continue()
    endif()
    execute_process(COMMAND "${candidate}" -c "import google.protobuf, jinja2"
                    RESULT_VARIABLE rv OUTPUT_QUIET ERROR_QUIET)
    if(rv EQUAL 0)
      set(XYMQTT_PYTHON_EXECUTABLE "${candidate}" CACHE FILEPATH
          "Python 3 with google.protobuf and jinja2, runs protoc-gen-xymqtt")
      message(STATUS "xymqtt: generator runs on ${candidate}")
      return()
    endif()
    list(APPEND tried "${candidate}")
  endforeach()
  string(REPLACE ";" ", " tried "${tried}")
  message(FATAL_ERROR
    "xymqtt: no Python 3 with both google.protobuf and jinja2 was found (tried: ${tried}).\n"
    "Install them (Debian: apt-get install python3-protobuf python3-jinja2) or point "
    "-DXYMQTT_PYTHON_EXECUTABLE=/path/to/python3 at an interpreter that has them.")
endfunction()

_xymqtt_find_python()

# protoc runs plugins as executables: a wrapper running the generator on the chosen interpreter.
set(XYMQTT_PROTOC_PLUGIN "${CMAKE_BINARY_DIR}/xymqtt_generator/protoc-gen-xymqtt")
file(CONFIGURE OUTPUT "${XYMQTT_PROTOC_PLUGIN}"
     CONTENT "#!/bin/sh\nexec \"${XYMQTT_PYTHON_EXECUTABLE}\" -B \"${XYMQTT_GENERATOR_DIR}/protoc-gen-xymqtt\" \"$@\"\n"
     @ONLY)
file(CHMOD "${XYMQTT_PROTOC_PLUGIN}" PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ
     GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)

# The C++ code of xymqtt/options.proto, xymqtt::options_proto: every generated .pb.cc refers to it. A
# program must hold it once (protobuf aborts when a .proto is registered twice), so the installed package
# ships it as a library of its own and every xymqtt_generate() library links that one; a project that
# builds xymqtt itself builds it once, here. PREBUILT_DIR: a directory holding xymqtt/options.pb.{h,cc}
# already generated (xymqtt's own generated/), used instead of running protoc.
function(xymqtt_options_library)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "PREBUILT_DIR" "")
  if(TARGET xymqtt::options_proto)
    return()
  endif()
  if(arg_PREBUILT_DIR)
    set(out "${arg_PREBUILT_DIR}")
  else()
    set(out "${CMAKE_BINARY_DIR}/xymqtt_options_proto")
    add_custom_command(
      OUTPUT "${out}/xymqtt/options.pb.h" "${out}/xymqtt/options.pb.cc"
      COMMAND "${CMAKE_COMMAND}" -E make_directory "${out}"
      COMMAND protobuf::protoc "--cpp_out=${out}" "-I${XYMQTT_PROTO_DIR}" "${XYMQTT_PROTO_DIR}/xymqtt/options.proto"
      DEPENDS "${XYMQTT_PROTO_DIR}/xymqtt/options.proto" protobuf::protoc
      COMMENT "xymqtt: generating xymqtt/options.pb.cc"
      VERBATIM)
  endif()
  add_library(xymqtt_options_proto "${out}/xymqtt/options.pb.cc" "${out}/xymqtt/options.pb.h")
  add_library(xymqtt::options_proto ALIAS xymqtt_options_proto)
  target_include_directories(xymqtt_options_proto PUBLIC
    $<BUILD_INTERFACE:${out}>
    $<INSTALL_INTERFACE:include>)
  target_link_libraries(xymqtt_options_proto PUBLIC protobuf::libprotobuf)
  set_target_properties(xymqtt_options_proto PROPERTIES
    POSITION_INDEPENDENT_CODE ON
    EXPORT_NAME options_proto
    PUBLIC_HEADER "${out}/xymqtt/options.pb.h")
  if(PROJECT_NAME STREQUAL "xymqtt" AND PROJECT_VERSION)
    set_target_properties(xymqtt_options_proto PROPERTIES
      VERSION "${PROJECT_VERSION}" SOVERSION "${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}")
  endif()
endfunction()

function(xymqtt_generate)
  cmake_parse_arguments(PARSE_ARGV 0 arg "MOCKS" "TARGET;OUT_DIR" "PROTOS;IMPORT_DIRS")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "xymqtt_generate: unknown arguments: ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_TARGET)
    message(FATAL_ERROR "xymqtt_generate: TARGET is required")
  endif()
  if(NOT arg_PROTOS)
    message(FATAL_ERROR "xymqtt_generate(${arg_TARGET}): PROTOS is required")
  endif()
  xymqtt_options_library()

  set(out "${arg_OUT_DIR}")
  if(NOT out)
    set(out "${CMAKE_CURRENT_BINARY_DIR}/${arg_TARGET}_generated")
  endif()
  set(import_dirs)
  foreach(dir IN LISTS arg_IMPORT_DIRS)
    get_filename_component(dir "${dir}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND import_dirs "${dir}")
  endforeach()
  if(NOT import_dirs)
    set(import_dirs "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  set(include_flags)
  foreach(dir IN LISTS import_dirs XYMQTT_PROTO_DIR)
    list(APPEND include_flags "-I${dir}")
  endforeach()

  set(protos)
  foreach(proto IN LISTS arg_PROTOS)
    get_filename_component(proto "${proto}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    list(APPEND protos "${proto}")
  endforeach()

  set(mocks_flag "mocks=false")
  if(arg_MOCKS)
    set(mocks_flag "mocks=true")
  endif()

  set(sources)
  set(mock_headers)
  foreach(proto IN LISTS protos)
    set(rel)
    foreach(dir IN LISTS import_dirs)
      file(RELATIVE_PATH candidate "${dir}" "${proto}")
      if(NOT candidate MATCHES "^\\.\\./")
        set(rel "${candidate}")
        break()
      endif()
    endforeach()
    if(NOT rel)
      message(FATAL_ERROR "xymqtt_generate(${arg_TARGET}): ${proto} is under none of IMPORT_DIRS (${import_dirs})")
    endif()
    string(REGEX REPLACE "\\.proto$" "" base "${rel}")
    set(outputs "${out}/${base}.pb.h" "${out}/${base}.pb.cc" "${out}/${base}.xymqtt.h" "${out}/${base}.xymqtt.cc")
    if(arg_MOCKS)
      list(APPEND outputs "${out}/${base}.xymqtt_mock.h")
      list(APPEND mock_headers "${out}/${base}.xymqtt_mock.h")
    endif()
    add_custom_command(
      OUTPUT ${outputs}
      COMMAND "${CMAKE_COMMAND}" -E make_directory "${out}"
      COMMAND protobuf::protoc
              "--plugin=protoc-gen-xymqtt=${XYMQTT_PROTOC_PLUGIN}"
              "--cpp_out=${out}" "--xymqtt_out=${out}" "--xymqtt_opt=${mocks_flag}"
              ${include_flags} "${proto}"
      DEPENDS ${protos} ${XYMQTT_GENERATOR_DEPENDS} "${XYMQTT_PROTOC_PLUGIN}" protobuf::protoc
      COMMENT "xymqtt: generating C++ from ${rel}"
      VERBATIM)
    list(APPEND sources ${outputs})
  endforeach()

  if(TARGET ${arg_TARGET})
    # An existing target (an executable, a library of the project's own) gets the sources, as
    # protobuf_generate does.
    set(existing TRUE)
    target_sources(${arg_TARGET} PRIVATE ${sources})
  else()
    set(existing FALSE)
    add_library(${arg_TARGET} ${sources})
  endif()
  target_include_directories(${arg_TARGET} PUBLIC "${out}")
  target_link_libraries(${arg_TARGET} PUBLIC xymqtt::protobuf xymqtt::options_proto)
  target_compile_features(${arg_TARGET} PUBLIC cxx_std_17)

  if(arg_MOCKS)
    if(NOT TARGET trompeloeil::trompeloeil)
      find_package(trompeloeil REQUIRED)
    endif()
    if(NOT TARGET ${arg_TARGET}_mocks)
      add_library(${arg_TARGET}_mocks INTERFACE)
    endif()
    # For an existing target: what its mock headers need, to link where they are included.
    if(existing)
      target_include_directories(${arg_TARGET}_mocks INTERFACE "${out}")
      target_link_libraries(${arg_TARGET}_mocks INTERFACE xymqtt::protobuf xymqtt::testing trompeloeil::trompeloeil)
    else()
      target_link_libraries(${arg_TARGET}_mocks INTERFACE ${arg_TARGET} xymqtt::testing trompeloeil::trompeloeil)
    endif()
  endif()
endfunction()
