#include <catch2/catch.hpp>
#include "xymqtt/testing/loopback.h"
