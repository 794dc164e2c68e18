# The generator.consumer and packaging.debs tests: installs the build tree into PREFIX (`cmake --install`,
# or with DEBS=ON the Debian packages CPack makes of it, unpacked into PREFIX), then configures, builds and
# runs the consumer project (tests/consumer) against it, with CMake and with pkg-config.
# Variables: BUILD_DIR PREFIX SOURCE_DIR WORK_DIR CXX CONFIG [DEBS].
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "$ ${ARGV}\n${out}${err}")
  if(NOT rv EQUAL 0)
    message(FATAL_ERROR "failed (${rv}): ${ARGV}")
  endif()
endfunction()

file(REMOVE_RECURSE "${PREFIX}" "${WORK_DIR}")
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
file(STRINGS "${SOURCE_DIR}/../../VERSION" version LIMIT_COUNT 1)
if(DEBS)
  # The four packages, each unpacked as dpkg would install it, into a scratch root.
  set(root "${PREFIX}")
  set(cpack_config)
  if(CONFIG)
    set(cpack_config -C "${CONFIG}")
  endif()
  run(cpack --config "${BUILD_DIR}/CPackConfig.cmake" -B "${WORK_DIR}/debs" ${cpack_config})
  file(GLOB debs "${WORK_DIR}/debs/*.deb")
  list(LENGTH debs n)
  if(NOT n EQUAL 4)
    message(FATAL_ERROR "expected 4 packages, got ${n}: ${debs}")
  endif()
  string(REGEX MATCH "^[0-9]+\\.[0-9]+" abi "${version}")
  foreach(name "libxymqtt${abi}" libxymqtt-dev protoc-gen-xymqtt xymqtt-cli)
    file(GLOB deb "${WORK_DIR}/debs/${name}_${version}_*.deb")
    if(NOT deb)
      message(FATAL_ERROR "no package ${name}_${version}_*.deb among ${debs}")
    endif()
    run(dpkg-deb --info "${deb}")
    run(dpkg-deb --contents "${deb}")
    run(dpkg-deb -x "${deb}" "${root}")
  endforeach()
  # The runtime package holds the versioned shared library and its SONAME link, the -dev one the
  # link-time name.
  foreach(f "lib/libxymqtt.so.${version}" "lib/libxymqtt.so.${abi}" "lib/libxymqtt_options_proto.so.${abi}"
            "lib/libxymqtt.so" "include/xymqtt/client.h" "include/xymqtt/options.pb.h" "bin/xymqtt"
            "bin/protoc-gen-xymqtt" "share/xymqtt/proto/xymqtt/options.proto"
            "share/xymqtt/generator/xymqtt_gen/schema_rules.json")
    if(NOT EXISTS "${root}/usr/${f}")
      message(FATAL_ERROR "the packages install no /usr/${f}")
    endif()
  endforeach()
  set(PREFIX "${root}/usr")
  set(ENV{LD_LIBRARY_PATH} "${PREFIX}/lib")
  run("${PREFIX}/bin/xymqtt" --version)
else()
  run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args})
  set(ENV{LD_LIBRARY_PATH} "${PREFIX}/lib:${PREFIX}/lib/x86_64-linux-gnu")
endif()
# The plugin on PATH (bin/), runnable from the installed prefix.
execute_process(COMMAND "${PREFIX}/bin/protoc-gen-xymqtt" --version RESULT_VARIABLE rv OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(NOT rv EQUAL 0 OR NOT out STREQUAL "protoc-gen-xymqtt ${version}\n")
  message(FATAL_ERROR "bin/protoc-gen-xymqtt --version: ${rv} '${out}${err}', expected 'protoc-gen-xymqtt ${version}'")
endif()
run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}" "-DCMAKE_PREFIX_PATH=${PREFIX}"
    "-DCMAKE_CXX_COMPILER=${CXX}" -DCMAKE_BUILD_TYPE=Debug)
run("${CMAKE_COMMAND}" --build "${WORK_DIR}" -j2)
run("${WORK_DIR}/consumer_test")

# Without CMake: the pkg-config files of the same prefix.
find_program(PKG_CONFIG pkg-config REQUIRED)
set(ENV{PKG_CONFIG_PATH} "${PREFIX}/lib/pkgconfig:${PREFIX}/lib/x86_64-linux-gnu/pkgconfig")
execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs xymqtt-testing
                RESULT_VARIABLE rv OUTPUT_VARIABLE flags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "pkg-config xymqtt-testing: ${err}")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
run("${CXX}" -std=c++17 "${SOURCE_DIR}/pkgconfig_main.cpp" -o "${WORK_DIR}/pkgconfig_test" ${flags})
run("${WORK_DIR}/pkgconfig_test")
