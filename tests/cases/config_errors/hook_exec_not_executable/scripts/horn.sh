#!/bin/sh
echo horn
